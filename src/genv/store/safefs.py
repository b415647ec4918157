"""File operations that stay safe when other users share the state folder.

Root runs genv in a folder every user can write to. So nothing here follows a symbolic link,
every file is opened relative to a folder descriptor, and files are replaced by renaming a
fresh temporary file (created with O_EXCL) over them: a reader never sees half a file and a
planted link or file can never redirect a write.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from genv.store.errors import StateError

STATE_DIR_MODE = 0o1777  # like /tmp: everyone may create files, only owners may replace them
FILE_MODE = 0o644
MAX_STATE_FILE_BYTES = 16 * 1024 * 1024


def ensure_state_dir(path: Path) -> int:
    """Open (creating it when missing) the shared state folder; returns a folder descriptor."""
    try:
        os.mkdir(path, STATE_DIR_MODE)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(path.parent, exist_ok=True)
        return ensure_state_dir(path)
    except PermissionError as error:
        raise StateError(
            f"cannot create the state folder {path}: {error.strerror}; "
            "set GENV_TMPDIR to a folder you can write, or ask an admin to create it"
        ) from None
    else:
        _chmod_created(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StateError(
                f"the state folder {path} is not a folder but a link or a file; "
                "ask an admin to remove it"
            ) from None
        raise StateError(f"cannot open the state folder {path}: {error.strerror}") from None
    _check_state_dir(fd, path)
    return fd


def _chmod_created(path: Path) -> None:
    """Give a folder we just created the shared mode, whatever the umask was."""
    with contextlib.suppress(OSError):
        os.chmod(path, STATE_DIR_MODE, follow_symlinks=False)


def _check_state_dir(fd: int, path: Path) -> None:
    """Refuse a folder others could use to swap files under root; repair it when we are root."""
    info = os.fstat(fd)
    euid = os.geteuid()
    if euid == 0 and info.st_uid != 0:
        # The first user to arrive created it; root takes it over so that no user can
        # delete other users' files in it.
        os.fchown(fd, 0, 0)
        os.fchmod(fd, STATE_DIR_MODE)
        return
    world_writable = info.st_mode & stat.S_IWOTH
    if world_writable and not info.st_mode & stat.S_ISVTX:
        if info.st_uid == euid:
            os.fchmod(fd, STATE_DIR_MODE)
            return
        raise StateError(
            f"the state folder {path} is writable by everyone but lacks the sticky bit; "
            f"ask an admin to run: chmod 1777 {path}"
        )


def read_file(dir_fd: int, name: str) -> tuple[bytes, os.stat_result] | None:
    """Contents and status of a regular file in the folder, or None when there is none.

    Links, folders, devices and fifos are refused rather than followed or blocked on.
    """
    try:
        fd = os.open(
            name,
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            dir_fd=dir_fd,
        )
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise StateError(f"{name} is a symbolic link; remove it") from None
        if error.errno in (errno.EACCES, errno.EPERM):
            raise StateError(
                f"cannot read {name}: {error.strerror}; its owner should run chmod 644 on it"
            ) from None
        raise StateError(f"cannot read {name}: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateError(f"{name} is not a regular file; remove it")
        if info.st_size > MAX_STATE_FILE_BYTES:
            raise StateError(f"{name} is too large to be a genv state file; remove it")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), info
    finally:
        os.close(fd)


def write_atomic(dir_fd: int, name: str, data: bytes, owner_uid: int) -> None:
    """Replace ``name`` with ``data`` in one rename; the file ends up owned by ``owner_uid``.

    No fsync: every record describes live processes, which a crash ends as well.
    """
    import secrets  # only writers pay for it; readers (the daemon's one-shot run) do not

    temporary = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(
        temporary,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        FILE_MODE,
        dir_fd=dir_fd,
    )
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, FILE_MODE)
            if os.geteuid() == 0 and owner_uid != 0:
                os.fchown(fd, owner_uid, -1)
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


def open_lock_file(dir_fd: int, name: str, shown: str | None = None) -> int:
    """A descriptor to flock on. Opened read-only so a file made by any user serves everyone.

    ``shown`` is how messages name the file (its full path); ``name`` by default.
    """
    shown = shown or name
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    for _ in range(3):
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except FileNotFoundError:
            try:
                fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, FILE_MODE, dir_fd=dir_fd)
                os.fchmod(fd, FILE_MODE)
            except FileExistsError:
                continue
            except OSError as error:
                raise StateError(
                    f"cannot create the lock file {shown}: {error.strerror}"
                ) from None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise StateError(
                    f"the lock file {shown} is a symbolic link; ask an admin to remove it"
                ) from None
            raise StateError(
                f"cannot open the lock file {shown}: {error.strerror}; "
                "ask an admin to remove it"
            ) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StateError(
                f"the lock file {shown} is not a regular file; ask an admin to remove it"
            )
        return fd
    raise StateError(f"cannot create the lock file {shown}")
