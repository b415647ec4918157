"""Pieces every command shares: the store, argument types, warnings, table formats."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from genv.domain import validate
from genv.store import State, Store

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from typing import Any


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


def log_as_daemon(program: str, level: str, *, when_used: bool = False) -> None:
    """Long-running commands (enforce, monitor, remote) log through the logging module,
    one escaped line each, as ``PROGRAM: LEVEL: message`` on stderr, instead of the
    ``genv: warning:`` lines of one-off commands. ``when_used``: set up before the first
    record at ``level`` or above, if any (one cycle of ``genv enforce`` seldom has one)."""
    from genv.system import logs

    def configure() -> None:
        from genv.cli import daemon_logs

        daemon_logs.configure(program, level)

    if when_used:
        logs.instead(configure, logs.LEVELS[level])
        return
    logs.settle()  # the one-off commands' set-up first: this one replaces it
    configure()
