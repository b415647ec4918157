"""Pieces every command shares: the store, argument types, warnings, table formats."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from genv.domain import validate
from genv.domain.timefmt import time_since, timestamp
from genv.store import State, Store


def open_store() -> Store:
    return Store()


def read_state(store: Store) -> State:
    state = store.read()
    warn_problems(state)
    return state


def warn_problems(state: State) -> None:
    """One line per state file that could not be used; the command goes on with the rest."""
    for problem in state.problems:
        print(f"genv: warning: {problem.line()}", file=sys.stderr)


def own_problem(state: State, uid: int) -> bool:
    """Whether a problem concerns the caller's own state (or any state, for root)."""
    return any(p.uid == uid or (uid == 0 and p.uid is not None) for p in state.problems)


def checked(check: Callable[[Any], Any]) -> Callable[[str], Any]:
    """An argparse type from a genv.domain.validate check: a bad value is a usage error."""

    def convert(text: str) -> Any:
        try:
            return check(text)
        except validate.InvalidValue as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = check.__name__.replace("_", " ")
    return convert


def add_parent_arguments(parser: argparse.ArgumentParser, reset_help: str) -> None:
    """What ``genv envs`` and ``genv devices`` take before their action, as in genv 1.4.3."""
    parser.add_argument(
        "--no-cleanup",
        action="store_true",
        help="Accepted for compatibility: ended environments never show",
    )
    parser.add_argument("--reset", action="store_true", help=reset_help)
    add_table_arguments(parser)


def add_table_arguments(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """The listing flags. Given both to ``genv devices`` and to ``genv devices ps`` so that
    either spelling works; the subcommand's copy sets no defaults, to keep the parent's."""
    default = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    parser.add_argument(
        "--no-header",
        dest="header",
        action="store_false",
        default=default(True),
        help="Do not print column headers",
    )
    parser.add_argument(
        "--timestamp",
        action="store_true",
        default=default(False),
        help="Print the stored time instead of how long ago it was",
    )
    parser.add_argument(
        "--format",
        choices=["csv", "tui", "json"],
        default=default("tui"),
        help="Output format (default: tui)",
    )


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
