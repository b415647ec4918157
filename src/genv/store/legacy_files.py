"""Which of genv 1.4.3's files are in the state folder, root's marker that says they were
taken over, and putting them aside: the few ``stat`` calls every command makes about
1.4.3's state (genv.store.legacy reads what the files claim, only when there are some).
"""

from __future__ import annotations

import os
import stat

from genv.domain import constants
from genv.store import safefs

FILES = constants.LEGACY_STATE_FILES
LOCK = "genv.lock"
MARKER = constants.LEGACY_MARKER
BACKUP_SUFFIX = ".1.4.3-"


def present(dir_fd: int) -> tuple[str, ...]:
    """Which of 1.4.3's state files are in the folder (as any kind of entry)."""
    found = []
    for name in FILES:
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        found.append(name)
    return tuple(found)


def taken_over(dir_fd: int) -> bool:
    """Whether root has taken 1.4.3's state over in this folder (a marker only root makes)."""
    try:
        info = os.stat(MARKER, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == 0


def pending(dir_fd: int) -> bool:
    """Whether the folder holds 1.4.3's state that root has not taken over yet."""
    return bool(present(dir_fd)) and not taken_over(dir_fd)


def keep_aside(dir_fd: int, stamp: str) -> list[str]:
    """Rename 1.4.3's files to ``NAME.1.4.3-<stamp>`` (a free name); the new names."""
    kept = []
    for name in (*FILES, LOCK):
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        target = f"{name}{BACKUP_SUFFIX}{stamp}"
        for number in range(1, 100):
            if not _exists(dir_fd, target):
                break
            target = f"{name}{BACKUP_SUFFIX}{stamp}.{number}"
        try:
            os.rename(name, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError:
            continue
        kept.append(target)
    return kept


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


NOTHING_TAKEN_OVER = '{"taken_over": [], "note": "no state of genv 1.4.3"}\n'


def mark(dir_fd: int, text: str, shown: str) -> None:
    """Write root's marker (replacing any planted one): 1.4.3's state was taken over."""
    try:
        info = os.stat(MARKER, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        info = None
    if info is not None and not stat.S_ISREG(info.st_mode):
        safefs.clear_planted(dir_fd, MARKER)
    safefs.write_atomic(dir_fd, MARKER, text.encode(), 0, shown)
