"""``genv migrate``: take over genv 1.4.3's state; and the same on the first root command.

Until root has taken it over, every command of a user says once what the admin should run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys

from genv.domain import constants

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from typing import TextIO

    from genv.core.migrate import Outcome
    from genv.domain.models import Device

NOT_TAKEN_OVER = (
    "this machine still holds environments of genv 1.4.3 that root has not taken over yet "
    "(nothing of them is lost meanwhile); an admin should run: sudo genv migrate"
)
# Commands that never look at the state: no takeover, no notice.
QUIET_COMMANDS = frozenset({"version", "demo", "migrate"})
QUIET_SHELL_FLAGS = frozenset({"--init", "--deinit", "--ok"})


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--format",
        choices=("plain", "json"),
        default="plain",
        help="How to report what was taken over (default: plain)",
    )


def run(args: argparse.Namespace) -> int:
    from genv.core import migrate
    from genv.store import Store

    store = Store()
    outcome = migrate.migrate(store, _devices())
    if outcome is None:
        if store.legacy_taken_over():
            print("genv 1.4.3's state was taken over already; there is nothing more to take over")
        else:
            print("there is no state of genv 1.4.3 here; nothing to take over")
        return 0
    if args.format == "json":
        print(json.dumps(outcome.as_json(), indent=2))
    else:
        _report(outcome, sys.stdout)
    return 1 if outcome.refused else 0


def _report(outcome: Outcome, out: TextIO) -> None:
    lines = [outcome.summary()]
    for env in outcome.environments:
        devices = ",".join(map(str, env.devices)) or "none"
        lines.append(
            f"environment {env.eid} of uid {env.uid}: {len(env.pids)} processes, "
            f"{len(env.kernel_ids)} kernels, devices {devices}"
        )
    lines += [f"refused: {line}" for line in outcome.refused]
    lines += [f"not usable in 1.4.3's files: {line}" for line in outcome.notes]
    if outcome.kept:
        lines.append("1.4.3's files are kept aside as: " + ", ".join(outcome.kept))
    print("\n".join(lines), file=out)


def _devices() -> list[Device] | None:
    """The hardware, when it can be read: to tell which taken-over attachments share."""
    from genv.backends import open_backend
    from genv.errors import GenvError

    try:
        return list(open_backend().snapshot(processes=False).devices)
    except (GenvError, OSError):
        return None


def _nothing_to_take_over(folder: str) -> None:
    """Root saw no 1.4.3 state here: say so with root's marker, so that files of 1.4.3's
    names that someone creates later shield no process from ``genv enforce``."""
    marker = os.path.join(folder, constants.LEGACY_MARKER)
    try:
        info = os.stat(marker, follow_symlinks=False)
    except OSError:
        info = None
    if info is not None and stat.S_ISREG(info.st_mode) and info.st_uid == 0:
        return  # root's own marker (one a user planted is replaced below)
    from genv.errors import GenvError
    from genv.store import Store

    with contextlib.suppress(GenvError, OSError):  # the command will say what is wrong
        from genv.store.legacy_files import NOTHING_TAKEN_OVER

        Store().mark_legacy_taken_over(NOTHING_TAKEN_OVER)


def before_command(command: str, argv: list[str]) -> None:
    """Run before every command: root takes 1.4.3's state over (saying so in one line); any
    other user is told once what the admin should run. Costs two ``lstat`` when there is
    none."""
    if command in QUIET_COMMANDS or (command == "shell" and QUIET_SHELL_FLAGS & set(argv)):
        return
    folder = os.environ.get("GENV_TMPDIR") or constants.DEFAULT_STATE_DIR
    if not any(os.path.lexists(os.path.join(folder, n)) for n in constants.LEGACY_STATE_FILES):
        if os.geteuid() == 0 and os.path.isdir(folder):
            _nothing_to_take_over(folder)
        return
    from genv.errors import GenvError
    from genv.store import Store

    try:
        store = Store()
        if not store.legacy_pending():
            return
        if store.caller_uid != 0 or os.geteuid() != 0:
            print(f"genv: warning: {NOT_TAKEN_OVER}", file=sys.stderr)
            return
        from genv.core import migrate

        outcome = migrate.migrate(store, _devices())
    except GenvError as error:  # the command itself will say what is wrong with the folder
        print(f"genv: warning: genv 1.4.3's state was not taken over: {error}", file=sys.stderr)
        return
    if outcome is not None:
        print(f"genv: {outcome.summary()} (details: sudo genv migrate)", file=sys.stderr)
        for line in outcome.refused:
            print(f"genv: warning: {line}", file=sys.stderr)
