"""``genv top``: the machine at a glance, live in a terminal, or one plain frame otherwise."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from genv.cli.common import checked
from genv.domain import validate

if TYPE_CHECKING:
    from genv.metrics.source import Source
    from genv.top.app import Top


def _endpoint(text: str) -> str:
    from genv.metrics.scrape import endpoint

    try:
        return endpoint(text)
    except ValueError as error:
        raise validate.InvalidValue(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    from genv.top.model import SORT_KEYS

    parser.add_argument(
        "-i",
        "--interval",
        type=checked(validate.refresh_interval),
        default=1.0,
        metavar="SECONDS",
        help="seconds between refreshes (default: 1)",
    )
    parser.add_argument(
        "--enforcer",
        type=checked(_endpoint),
        default=os.environ.get("GENV_ENFORCER_METRICS") or None,
        metavar="URL",
        help="the metrics of genv enforce --metrics-port (HOST:PORT or a URL; default: "
        "$GENV_ENFORCER_METRICS), to show its latest actions",
    )
    parser.add_argument("--user", metavar="NAME", help="show only this user (key u)")
    parser.add_argument(
        "--sort", choices=SORT_KEYS, default="user", help="order of users (key s; default: user)"
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="print one frame and exit (the default when stdout is not a terminal)",
    )


def run(args: argparse.Namespace) -> int:
    from genv.metrics.local import LocalSource

    return show(args, LocalSource())


def show(args: argparse.Namespace, source: Source, top: Top | None = None) -> int:
    """``source`` (this machine, or a cluster: genv remote top) live, or one plain frame."""
    from rich.console import Console

    from genv.top.app import EnforcerPoller, Top
    from genv.top.model import ViewOptions

    interactive = sys.stdout.isatty() and not args.once
    poller = None
    try:
        if args.enforcer:
            poller = EnforcerPoller(args.enforcer, args.interval).start()
        top = top or Top(source, args.interval)
        top.enforcer = poller
        top.options = ViewOptions(args.sort, args.user)
        if interactive:
            top.run(Console())
        else:
            columns = os.environ.get("COLUMNS", "")
            width = int(columns) if validate.decimal(columns) and len(columns) <= 5 else 0
            width = width or 120
            top.print_once(Console(width=width, color_system=None, highlight=False))
    finally:
        if poller is not None:
            poller.stop()
        source.close()
    return 0
