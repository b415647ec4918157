"""``genv``: parse the command line, run one command, turn user errors into one line.

Only the module of the command being run is imported, so that quick commands (the shell
integration runs several per prompt) start fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

# command -> (module, one-line help). Each module has add_arguments(parser) and run(args).
COMMANDS: dict[str, tuple[str, str]] = {
    "activate": ("genv.cli.shell_commands", "Activate an environment in this shell"),
    "attach": ("genv.cli.shell_commands", "Attach devices to this shell's environment"),
    "config": ("genv.cli.shell_commands", "Configure this shell's environment"),
    "deactivate": ("genv.cli.shell_commands", "Deactivate this shell's environment"),
    "demo": ("genv.cli.demo", "Play the enforcement quick start on a simulated machine"),
    "detach": ("genv.cli.shell_commands", "Detach devices from this shell's environment"),
    "devices": ("genv.cli.devices", "Query and manage devices"),
    "enforce": ("genv.cli.enforce", "Enforce GPU usage"),
    "envs": ("genv.cli.envs", "Query and manage environments"),
    "home": ("genv.cli.shell_commands", "Show the project folder of this environment"),
    "lock": ("genv.cli.lock", "Run a command with exclusive use of over-subscribed devices"),
    "migrate": ("genv.cli.migrate", "Take over the state of genv 1.4.3 (as root)"),
    "monitor": ("genv.cli.monitor", "Export usage to Prometheus, with Grafana dashboards"),
    "remote": ("genv.cli.remote", "Query, manage and enforce remote hosts over SSH"),
    "shell": ("genv.cli.shell_commands", "Shell integration"),
    "status": ("genv.cli.shell_commands", "Show the status of this shell's environment"),
    "top": ("genv.cli.top", "Show the GPUs, environments and users live"),
    "usage": ("genv.cli.usage", "What genv remote runs on each host (snapshot, execute, serve)"),
    "version": ("genv.cli.version", "Print the genv version"),
}


def _module(command: str):
    return importlib.import_module(COMMANDS[command][0])


def terminal_columns() -> int:
    """``shutil.get_terminal_size().columns`` (``COLUMNS``, else the terminal, else 80),
    without importing ``shutil``: argparse does at each ``add_argument``, and with it ``bz2``,
    ``lzma`` and ``fnmatch``, about 3 ms of every command's start."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, as wide as the terminal (see ``terminal_columns``)."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        width = terminal_columns() - 2 if width is None else width
        super().__init__(prog, indent_increment, max_help_position, width)


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line naming the command and what is wrong (exit code 2).

    Its sub-commands' parsers are of this class too, and so format help the same way."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        from genv.domain.validate import safe_text  # argparse quotes what was typed

        self.exit(2, f"{self.prog}: {safe_text(message, 400)} (see: {self.prog} --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser; or, with ``only``, that command's alone (what parsing a
    command line that starts with it needs: the others would only be listed in help and
    errors about the command word, which is known to be right then)."""
    parser = OneLineParser(
        prog="genv",
        description="GPU environments on a shared machine, and their enforcement",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command, (_, help_text) in COMMANDS.items():
        if only is None or command == only:
            sub = subparsers.add_parser(command, help=help_text, description=help_text)
            _module(command).add_arguments(sub, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argv[0] if argv else None
    parser = build_parser(first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from genv.system import logs

    logs.when_used(_log_warnings)  # logging is imported only when there is a warning
    try:
        from genv.cli.migrate import before_command

        before_command(args.command, argv)
        return int(_module(args.command).run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as error:  # user-caused errors become one line; see user_error()
        found = user_error(error)
        if found is None:
            raise
        line, code = found
        from genv.domain.validate import safe_text

        print(f"genv: {safe_text(line, 1000)}", file=sys.stderr)
        return code


def _log_warnings() -> None:
    """Warnings of the library layers (logging module) reach the user as ``genv: warning:``
    lines; the daemon sets up its own format instead (see genv.system.logs)."""
    import logging

    logger = logging.getLogger("genv")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("genv: warning: %(message)s"))
        handler.setLevel(logging.WARNING)
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)


def user_error(error: Exception) -> tuple[str, int] | None:
    """The one line and exit code for an error a user can cause, or None for a bug."""
    from genv.errors import GenvError

    if isinstance(error, GenvError):
        return str(error).replace("\n", " ").strip() or type(error).__name__, error.exit_code
    if isinstance(error, PermissionError):
        return f"permission denied: {error.filename or error}; run it with sudo", 1
    if isinstance(error, OSError) and error.errno == 28:  # ENOSPC anywhere else
        return f"no space left on the device ({error.filename or 'writing'})", 1
    return None
