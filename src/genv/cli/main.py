"""``genv``: parse the command line, run one command, turn user errors into one line.

Only the module of the command being run is imported, so that quick commands (the shell
integration runs several per prompt) start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

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
    "shell": ("genv.cli.shell_commands", "Shell integration"),
    "status": ("genv.cli.shell_commands", "Show the status of this shell's environment"),
    "version": ("genv.cli.version", "Print the genv version"),
}


def _module(command: str):
    return importlib.import_module(COMMANDS[command][0])


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genv",
        description="GPU environments on a shared machine, and their enforcement",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command, (_, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(command, help=help_text, description=help_text)
        if only is None or command == only:
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
    try:
        return int(_module(args.command).run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as error:  # user-caused errors become one line; see user_error()
        line = user_error(error)
        if line is None:
            raise
        print(f"genv: {line}", file=sys.stderr)
        return 1


def user_error(error: Exception) -> str | None:
    """The one line to show for an error a user can cause, or None for a bug."""
    from genv.backends.base import BackendError
    from genv.domain.allocation import AllocationError
    from genv.domain.memory import MemoryFormatError
    from genv.store.errors import StoreError

    if isinstance(error, (BackendError, StoreError, AllocationError, MemoryFormatError)):
        return str(error)
    if isinstance(error, PermissionError):
        return f"permission denied: {error.filename or error}; run it with sudo"
    return None
