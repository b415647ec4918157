"""Each user's writer lock: only that user (and root) can open it, so no one else can stall it.

A flock needs only read access, so a lock file every user can open is a lock every user can
hold forever. Here each user has their own lock file, mode 0600: the user's own commands take
turns on it, root opens it when it changes that user's records, and nobody else can touch it.

Because another user can plant a name first (see genv.store.names), a user's lock has several
candidate names. Every command of that user takes *every* rightful candidate that exists, in
order, creating the first free one only when it holds none; then it looks again and starts
over if a rightful candidate appeared that it does not hold. Lock files are never removed, so
two commands that both got through hold at least one file in common: the one whose check
came last would have seen the other's file. Taking them in one order rules out deadlock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator

from genv.store import names
from genv.store.errors import StateError

LOCK_MODE = 0o600
_ATTEMPTS = 50


@contextlib.contextmanager
def user_lock(
    dir_fd: int, uid: int, shown_dir: str, timeout: float | None = None
) -> Iterator[None]:
    """Hold the writer lock of ``uid`` for the block; ``timeout`` None waits as long as it takes.

    Raises StateError when the lock is not had within ``timeout`` seconds, or when every name
    it could have is taken by other users' files.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    for _ in range(_ATTEMPTS):
        held = _take_all(dir_fd, uid, shown_dir, deadline)
        try:
            if _holds_every_rightful(dir_fd, uid, held):
                yield
                return
        finally:
            for fd, _ in held:
                os.close(fd)
        import random

        time.sleep(random.uniform(0.001, 0.01))  # a rightful name appeared meanwhile: again
    raise StateError(f"could not take the state lock of uid {uid} in {shown_dir}; try again")


def _take_all(
    dir_fd: int, uid: int, shown_dir: str, deadline: float | None
) -> list[tuple[int, tuple[int, int]]]:
    held: list[tuple[int, tuple[int, int]]] = []
    try:
        for name in names.lock_names(uid):
            fd = _open_rightful(dir_fd, name, uid, create=not held)
            if fd is None:
                continue
            info = os.fstat(fd)
            held.append((fd, (info.st_dev, info.st_ino)))
            _flock(fd, uid, shown_dir, deadline)
    except BaseException:
        for fd, _ in held:
            os.close(fd)
        raise
    if not held:
        raise StateError(
            f"every lock name of uid {uid} in {shown_dir} is taken by another user's file; "
            f"an admin should remove them: sudo rm {shown_dir}/.lock-{uid}*"
        )
    return held


def _open_rightful(dir_fd: int, name: str, uid: int, create: bool) -> int | None:
    """The lock file ``name`` when it is rightfully ``uid``'s; created when missing and
    ``create``; None when it is anything else (planted, or a file that cannot be opened).

    A name is looked at (lstat) before it is opened, and only a rightful file is opened: an
    open of something planted could block or fail in ways its planter chose.
    """
    for _ in range(3):
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            if not create:
                return None
            fd = _create(dir_fd, name, uid)
            if fd is not None:
                return fd
            continue  # someone made it meanwhile: look at what they made
        except OSError:
            return None
        if not names.rightful(info, uid, names.LOCK):
            return None
        try:
            fd = os.open(
                name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
            )
        except OSError:
            return None
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino) or not names.rightful(
            opened, uid, names.LOCK
        ):
            os.close(fd)
            continue  # replaced between the look and the open
        if opened.st_mode & 0o077:
            with contextlib.suppress(OSError):  # only the user's own: nobody else may hold it
                os.fchmod(fd, LOCK_MODE)
        return fd
    return None


def _create(dir_fd: int, name: str, uid: int) -> int | None:
    """Make ``uid``'s lock ``name``; None when the name was taken meanwhile.

    Root makes it under a temporary name, gives it to ``uid``, then links it into place, so
    that the name never shows a file of root's (which would be taken for planted).
    """
    flags = os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    if os.geteuid() != 0 or uid == 0:
        try:
            fd = os.open(name, flags, LOCK_MODE, dir_fd=dir_fd)
        except FileExistsError:
            return None
        except OSError as error:
            raise StateError(f"cannot create the lock file {name}: {error.strerror}") from None
        with contextlib.suppress(OSError):
            os.fchmod(fd, LOCK_MODE)
        return fd
    temporary = f".genv-new-{os.urandom(6).hex()}"
    try:
        fd = os.open(temporary, flags, LOCK_MODE, dir_fd=dir_fd)
    except OSError as error:
        raise StateError(f"cannot create the lock file {name}: {error.strerror}") from None
    try:
        os.fchmod(fd, LOCK_MODE)
        os.fchown(fd, uid, -1)
        os.link(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except FileExistsError:
        os.close(fd)
        return None
    except OSError as error:
        os.close(fd)
        raise StateError(f"cannot create the lock file {name}: {error.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
    return fd


def _flock(fd: int, uid: int, shown_dir: str, deadline: float | None) -> None:
    if deadline is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    pause = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StateError(
                    f"the state of uid {uid} in {shown_dir} is being changed by another "
                    "command of that user, which has not finished; try again"
                ) from None
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.05)


def _holds_every_rightful(dir_fd: int, uid: int, held: list[tuple[int, tuple[int, int]]]) -> bool:
    mine = {identity for _, identity in held}
    for name in names.lock_names(uid):
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if names.rightful(info, uid, names.LOCK) and (info.st_dev, info.st_ino) not in mine:
            return False
    return True
