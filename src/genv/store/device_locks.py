"""Per-device locks, so environments sharing an over-subscribed device can take turns.

One empty file per device index in the state folder, ``device-<index>.lock``, flocked
exclusively by ``genv lock`` (and the Python API) around a command. Locks are taken in
increasing index order, so two environments sharing several devices never deadlock, and a
flock is released by the kernel when its holder dies, so a crash leaves no stale lock.

Every environment of a device must be able to open its lock, so anyone can; and anyone who
can open it can hold it. So a lock is only waited for while its holder (``/proc/locks`` says
who) is a process of a user who has an environment on that device: a stranger holding it is
logged and ignored, never waited on. A planted name (a link, a folder) is skipped the same way.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from genv.store import safefs

# (device index, pid holding its lock) -> whether that holder is one to wait for
MayWaitFor = Callable[[int, int], bool]


def lock_name(index: int) -> str:
    return f"device-{index}.lock"


def lock_holders(device: int, inode: int) -> list[int]:
    """Pids holding a flock on the file (``device``, ``inode``), from /proc/locks."""
    wanted = f"{os.major(device):02x}:{os.minor(device):02x}:{inode}"
    holders = []
    try:
        with open("/proc/locks", "rb") as file:
            for raw in file:
                fields = raw.decode("ascii", "replace").split()
                if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
                    continue
                if fields[5] == wanted and fields[4].isdigit():
                    holders.append(int(fields[4]))
    except OSError:
        pass
    return holders


@contextmanager
def hold(
    root: Path,
    indices: Iterable[int],
    may_wait_for: MayWaitFor,
    on_wait: Callable[[int], None] | None = None,
    on_skip: Callable[[int, list[int]], None] | None = None,
) -> Iterator[list[int]]:
    """Hold the locks of ``indices`` (in increasing order) for the duration of the block.

    ``on_wait(index)`` is called once before waiting on a lock someone else holds, so the
    user learns why nothing happens; ``on_skip(index, holders)`` when a lock is not waited
    for (see the module). Yields the indices locked.
    """
    order = sorted(set(indices))
    descriptors: list[int] = []
    locked: list[int] = []
    if not order:
        yield order
        return
    dir_fd = safefs.ensure_state_dir(root)
    try:
        for index in order:
            fd = safefs.open_lock_file(dir_fd, lock_name(index), str(root / lock_name(index)))
            if fd is None:
                if on_skip is not None:
                    on_skip(index, [])
                continue
            descriptors.append(fd)
            if _take(fd, index, may_wait_for, on_wait, on_skip):
                locked.append(index)
        yield locked
    finally:
        for fd in reversed(descriptors):
            os.close(fd)
        os.close(dir_fd)


def _take(
    fd: int,
    index: int,
    may_wait_for: MayWaitFor,
    on_wait: Callable[[int], None] | None,
    on_skip: Callable[[int, list[int]], None] | None,
) -> bool:
    info = os.fstat(fd)
    told = False
    pause = 0.01
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        holders = [pid for pid in lock_holders(info.st_dev, info.st_ino) if pid != os.getpid()]
        if holders and not any(may_wait_for(index, pid) for pid in holders):
            if on_skip is not None:
                on_skip(index, holders)
            return False
        if not told and on_wait is not None:
            on_wait(index)
            told = True
        time.sleep(pause)
        pause = min(pause * 2, 0.25)
