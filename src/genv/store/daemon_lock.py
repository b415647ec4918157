"""One enforcing daemon per state folder: a lock on a pid file only its owner can open.

``.enforce-<uid>.pid`` (root's: ``.enforce-0.pid``), mode 0600, in the state folder. The daemon
holds an exclusive flock on it for its whole life and writes its pid in it; a second one finds
it locked and says which pid holds it. No user can open root's file, so no user can take the
lock first and switch enforcement off. In a folder everyone writes to, another user may plant
the name first (a link, a folder, a fifo, a file of theirs, a hard link to some file of
root's): root puts a fresh file of its own in its place in one rename, so the name is never
free for them to take again (a user cannot replace root's entry in the sticky folder); it
never follows, truncates or blocks on what it finds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

from genv.store import safefs
from genv.store.errors import StateError
from genv.system import logs

log = logs.logger("genv.store")

PID_FILE_MODE = 0o600
_ATTEMPTS = 8


def pid_file_name(uid: int) -> str:
    return f".enforce-{uid}.pid"


class AlreadyRunning(StateError):
    """Another daemon holds the lock of this state folder."""


class DaemonLock:
    """Held while the descriptor is open; ``close`` (or exiting) lets it go."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def take(dir_fd: int, root: Path) -> DaemonLock:
    """Take the daemon lock of the folder ``dir_fd`` (shown as ``root``), or raise
    AlreadyRunning naming the daemon that holds it (StateError when the name cannot be had)."""
    euid = os.geteuid()
    name = pid_file_name(euid)
    path = root / name
    for _ in range(_ATTEMPTS):
        fd = _open(dir_fd, name, path)
        if fd is None:
            continue  # it was not ours and is gone now: again
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != euid or info.st_nlink != 1:
                os.close(fd)
                _remove(dir_fd, name, path, info.st_uid)
                continue
            if stat.S_IMODE(info.st_mode) != PID_FILE_MODE:
                os.fchmod(fd, PID_FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _pid_in(fd)
                os.close(fd)
                who = f"pid {holder}" if holder else "a process whose pid it did not write"
                raise AlreadyRunning(
                    f"genv enforce is already running on the state folder {root} ({who}, "
                    f"holding {path}); stop it first (--dry-run and --interval 0 may run "
                    "beside it)"
                ) from None
            _write_pid(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        return DaemonLock(fd, path)
    raise StateError(
        f"cannot take the daemon lock {path}: the name keeps being taken by other files; "
        f"an admin should remove it: sudo rm -r {path}"
    )


def _open(dir_fd: int, name: str, path: Path) -> int | None:
    """The file under ``name`` (created when there is none); None when something that is not
    a file we may open was there and was removed."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        # Looked at before it is opened: opening another user's file for writing could
        # fail on their terms (a program running, a lease) and keep the daemon from starting.
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        pass
    except OSError as error:
        raise StateError(f"cannot look at {path}: {error.strerror}") from None
    else:
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink != 1:
            _remove(dir_fd, name, path, info.st_uid)
            return None
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        try:
            return os.open(name, flags | os.O_CREAT | os.O_EXCL, PID_FILE_MODE, dir_fd=dir_fd)
        except FileExistsError:
            return None  # someone made it meanwhile: look at what they made
        except OSError as error:
            raise StateError(f"cannot create {path}: {error.strerror}") from None
    except OSError as error:
        if error.errno in _NOT_OURS:
            # a link, a folder, a socket, a file we may not open (swapped in since it was
            # looked at): not ours
            try:
                owner = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_uid
            except OSError:
                return None
            _remove(dir_fd, name, path, owner)
            return None
        raise StateError(f"cannot open {path}: {error.strerror}") from None


_NOT_OURS = (
    errno.ELOOP,
    errno.EISDIR,
    errno.ENXIO,
    errno.EACCES,
    errno.EPERM,
    errno.ETXTBSY,  # a program running
    errno.EAGAIN,  # a lease (EWOULDBLOCK)
)


def _remove(dir_fd: int, name: str, path: Path, owner: int) -> None:
    """Get rid of what is under ``name`` and is not a lock we can use. Root replaces anything
    (another user planted it, or it is an odd thing of root's own) with an empty file of its
    own, in one rename: unlinking it first would leave the name free, and a user planting it
    again and again would win every time; a user removes only their own."""
    euid = os.geteuid()
    if euid != 0 and owner != euid:
        raise StateError(
            f"{path} belongs to uid {owner}, so this daemon cannot use it; "
            f"an admin should remove it: sudo rm -r {path}"
        )
    if euid == 0:
        done = safefs.install_rightful(dir_fd, name, b"", 0, PID_FILE_MODE)
    else:
        done = safefs.clear_planted(dir_fd, name)
    if not done:
        raise StateError(f"cannot remove {path}, which is not a daemon lock; remove it by hand")
    if owner != euid:
        log.warning("removed %s, planted by uid %d", path, owner)


def _pid_in(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 1 << 22 else None


def _write_pid(fd: int) -> None:
    """The pid, for the line a second daemon prints; a full disk only loses that line."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
