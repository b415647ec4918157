"""What listings show, for every front end that lists (the CLI, genv remote): genv's
fixed-width and comma-separated tables, times as people read them, and the JSON form of an
environment. Every cell is escaped, so that nothing in a record can add a line or a field."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence

from genv.domain import validate
from genv.domain.models import Environment
from genv.domain.timefmt import time_since, timestamp


def when(value: float, args: argparse.Namespace) -> str:
    return timestamp(value) if getattr(args, "timestamp", False) else time_since(value)


def print_table(
    args: argparse.Namespace,
    header: Sequence[str],
    widths: Sequence[int],
    rows: Iterable[Sequence[object]],
) -> None:
    """genv's fixed-width (tui) or comma-separated (csv) tables. Cells are escaped, so that
    nothing in them can add a line or (in csv) a field."""
    lines = []
    if args.header:
        lines.append(_line(args.format, header, widths))
    lines.extend(_line(args.format, [_cell(v, args.format) for v in row], widths) for row in rows)
    if lines:
        print("\n".join(lines))


def _cell(value: object, fmt: str) -> str:
    text = validate.safe_text(str(value), 1024)
    return text.replace(",", "\\x2c") if fmt == "csv" else text


def _line(fmt: str, values: Sequence[str], widths: Sequence[int]) -> str:
    if fmt == "csv":
        return ",".join(values)
    cells = [f"{value:<{width}}" for value, width in zip(values[:-1], widths, strict=True)]
    return ("".join(cells) + values[-1]).rstrip()


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def environment_json(env: Environment) -> dict:
    """An environment as ``--format json`` shows it."""
    return {
        "eid": env.eid,
        "uid": env.uid,
        "username": env.username,
        "creation": env.creation,
        "config": {
            "name": env.config.name,
            "gpus": env.config.gpus,
            "gpu_memory": env.config.gpu_memory,
        },
        "pids": list(env.pids),
        "kernel_ids": list(env.kernel_ids),
    }
