"""``genv lock COMMAND...``: run a command with exclusive use of the environment's shared devices.

Environments that over-subscribe a device agree to take turns on it: each wraps its GPU work
in ``genv lock``, which waits for the per-device locks (see genv.store.device_locks), runs the
command, releases, and exits with the command's exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "argv",
        nargs=argparse.REMAINDER,
        metavar="COMMAND",
        help="The command to run while holding the device locks",
    )


def run(args: argparse.Namespace) -> int:
    import subprocess

    from genv.core import lock, session
    from genv.errors import UsageError
    from genv.store import NotFound, Store

    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("give a command to run, e.g.: genv lock python train.py")
    eid = session.current_eid()
    with contextlib.ExitStack() as stack:
        try:
            if eid is not None:  # outside an environment there is nothing to hold (as 1.4.3)
                stack.enter_context(lock.hold(Store(), eid, on_wait=_waiting, on_skip=_skipped))
        except NotFound:
            raise session.SessionError(
                f"environment {eid} no longer exists; run: genv deactivate"
            ) from None
        try:
            process = subprocess.Popen(argv)
        except FileNotFoundError:
            print(f"genv: {argv[0]}: command not found", file=sys.stderr)
            return 127
        except PermissionError:
            print(f"genv: {argv[0]}: permission denied", file=sys.stderr)
            return 126
        return _wait(process)


def _skipped(index: int, holders: list[int]) -> None:
    who = f"process {', '.join(map(str, holders))}" if holders else "a file that is not a lock"
    print(
        f"genv: warning: device {index}'s lock is held by {who}, not of an environment on "
        "that device; going ahead without it",
        file=sys.stderr,
    )


def _waiting(index: int) -> None:
    print(
        f"genv: waiting for device {index}, which another environment has locked...",
        file=sys.stderr,
    )


def _wait(process: subprocess.Popen) -> int:
    """The command's exit code, as a shell reports it (128 + signal when killed).

    Ctrl-C reaches the command too (same process group); the locks are held until it ends.
    """
    while True:
        try:
            code = process.wait()
            break
        except KeyboardInterrupt:
            continue
    return 128 - code if code < 0 else code
