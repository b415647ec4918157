"""File operations that stay safe when other users share the state folder.

Root runs genv in a folder every user can write to. So nothing here follows a symbolic link,
every file is opened relative to a folder descriptor, nothing blocks on a fifo, and files are
replaced by renaming a fresh temporary file (created with O_EXCL) over them: a reader never
sees half a file and a planted link or file can never redirect a write.

The folder itself must belong to root: whoever owns it may remove everyone's files. Root
creates it (or takes over one a user made); a user never creates the default folder (they
are told what the admin should run), and a folder that another user owns gets a warning.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from genv.domain import constants
from genv.store.errors import StateError
from genv.system import logs

log = logs.logger("genv.store")

STATE_DIR_MODE = 0o1777  # like /tmp: everyone may create files, only owners may replace them
FILE_MODE = 0o644
DEFAULT_STATE_DIR = constants.DEFAULT_STATE_DIR
TMPFILES_LINE = f"d {DEFAULT_STATE_DIR} 1777 root root -"


def ensure_state_dir(path: Path) -> int:
    """Open (creating it when allowed) the shared state folder; returns a folder descriptor."""
    if not path.is_absolute():
        raise StateError(
            f"the state folder {path} is a relative path (GENV_TMPDIR); give an absolute one"
        )
    euid = os.geteuid()
    try:
        fd = _open_dir(path)
    except FileNotFoundError:
        _create(path, euid)
        fd = _open_dir(path)
    try:
        _check_state_dir(fd, path, euid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_dir(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StateError(
                f"the state folder {path} is not a folder but a link or a file; "
                "ask an admin to remove it"
            ) from None
        raise StateError(f"cannot open the state folder {path}: {error.strerror}") from None


def _create(path: Path, euid: int) -> None:
    if euid != 0 and _shared_parent(path):
        # Whoever creates a shared folder owns it, and could remove other users' files.
        raise StateError(
            f"the state folder {path} does not exist yet; an admin should create it: "
            f"sudo install -d -m 1777 -o root -g root {path} (or any sudo genv command; "
            "see docs/security.md), or set GENV_TMPDIR to a folder of your own"
        )
    try:
        if not path.parent.exists():
            os.makedirs(path.parent, mode=0o755, exist_ok=True)
        os.mkdir(path, STATE_DIR_MODE)
    except FileExistsError:
        return
    except OSError as error:
        raise StateError(
            f"cannot create the state folder {path}: {error.strerror}; "
            "set GENV_TMPDIR to a folder you can write, or ask an admin to create it"
        ) from None
    with contextlib.suppress(OSError):  # the umask took bits away
        os.chmod(path, STATE_DIR_MODE, follow_symlinks=False)


def _shared_parent(path: Path) -> bool:
    """Whether ``path`` would be made in a folder others can write to (like /var/tmp), where a
    folder of genv's is meant for everyone: only root may create it there."""
    try:
        info = os.stat(path.parent)
    except OSError:
        return str(path) == DEFAULT_STATE_DIR
    return str(path) == DEFAULT_STATE_DIR or bool(info.st_mode & (stat.S_IWOTH | stat.S_IWGRP))


def _check_state_dir(fd: int, path: Path, euid: int) -> None:
    """Refuse a folder others could use to swap files under root; repair it when we may."""
    info = os.fstat(fd)
    if euid == 0 and info.st_uid != 0:
        # The first user to arrive created it; root takes it over so that no user can
        # remove other users' files in it.
        os.fchown(fd, 0, 0)
        os.fchmod(fd, STATE_DIR_MODE)
        log.warning(
            "took over the state folder %s from uid %d (now root's, mode 1777)", path, info.st_uid
        )
        return
    others_write = info.st_mode & (stat.S_IWOTH | stat.S_IWGRP)
    if others_write and not info.st_mode & stat.S_ISVTX:
        if info.st_uid == euid:
            os.fchmod(fd, STATE_DIR_MODE)
            return
        raise StateError(
            f"the state folder {path} is writable by others but lacks the sticky bit; "
            f"ask an admin to run: sudo chmod 1777 {path}"
        )
    if info.st_uid not in (0, euid) and others_write:
        log.warning(
            "the state folder %s belongs to uid %d, who can remove other users' files in "
            "it; an admin should run: sudo chown root:root %s",
            path,
            info.st_uid,
            path,
        )


def same_folder(fd: int, path: Path) -> bool:
    """Whether ``fd`` still is the folder at ``path`` (not removed, not replaced)."""
    try:
        opened = os.fstat(fd)
        current = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return opened.st_nlink > 0 and (opened.st_dev, opened.st_ino) == (
        current.st_dev,
        current.st_ino,
    )


def read_file(dir_fd: int, name: str, limit: int) -> tuple[bytes, os.stat_result] | None:
    """Contents and status of a regular file in the folder, or None when there is none.

    Links, folders, devices and fifos are refused rather than followed or blocked on; a file
    over ``limit`` bytes is refused without being read. OSError from the system goes through
    (the caller decides whose fault it is).
    """
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except FileNotFoundError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file")
        if info.st_size > limit:
            raise OverflowError(f"larger than {limit} bytes")
        chunks = []
        size = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:  # it grew while we read: as bad as if it had been that big
                raise OverflowError(f"larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks), info
    finally:
        os.close(fd)


def write_atomic(dir_fd: int, name: str, data: bytes, owner_uid: int, shown: str) -> None:
    """Replace ``name`` with ``data`` in one rename; the file ends up owned by ``owner_uid``.

    No fsync: every record describes live processes, which a crash ends as well. On any
    failure (a full disk above all) the temporary file is removed, the old file is untouched,
    and StateError says so in one line.
    """
    # os.urandom(6).hex() is secrets.token_hex(6), without importing secrets (and hashlib)
    temporary = f".{name}.{os.urandom(6).hex()}.tmp"
    try:
        _new_file(dir_fd, temporary, data, FILE_MODE, owner_uid)
        os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise StateError(_write_failure(shown, error)) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


def _new_file(dir_fd: int, name: str, data: bytes, mode: int, owner_uid: int) -> None:
    """Create ``name`` (never an existing one, never through a link) holding ``data``, with
    ``mode`` and, when root writes it, owned by ``owner_uid``. OSError as the system says;
    what was created is left for the caller to remove."""
    fd = os.open(
        name,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        mode,
        dir_fd=dir_fd,
    )
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fchmod(fd, mode)
        if os.geteuid() == 0 and owner_uid != 0:
            os.fchown(fd, owner_uid, -1)
    finally:
        os.close(fd)


def _write_failure(shown: str, error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"cannot save {shown}: no space left on the device; nothing was changed "
            "(free some space and try again)"
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        return (
            f"cannot save {shown}: permission denied; nothing was changed (is the state "
            "folder writable? ask an admin)"
        )
    return f"cannot save {shown}: {error.strerror or error}; nothing was changed"


def clear_planted(dir_fd: int, name: str) -> bool:
    """Free a name another user planted (root only), in one system call whatever it is: a
    file, link or fifo is unlinked; a folder (however deep or wide) is renamed aside, out of
    genv's names, for an admin to remove. True when the name is free."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        if stat.S_ISDIR(info.st_mode):
            aside = f".genv-planted-{os.urandom(6).hex()}"
            os.rename(name, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            log.warning(
                "moved a folder planted as %s aside to %s; an admin may remove it", name, aside
            )
        else:
            os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def install_rightful(dir_fd: int, name: str, data: bytes, owner_uid: int, mode: int) -> bool:
    """Put a file of ``owner_uid`` (root only) in place of whatever another user planted
    under ``name``, in one rename: at no moment is the name free for them to take again.
    True when done."""
    temporary = f".genv-new-{os.urandom(6).hex()}"
    try:
        _new_file(dir_fd, temporary, data, mode, owner_uid)
        for _ in range(3):
            try:
                os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                return True
            except OSError as error:
                if error.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    return False
                clear_planted(dir_fd, name)  # a folder: out of the way first
        return False
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)


def open_lock_file(dir_fd: int, name: str, shown: str | None = None) -> int | None:
    """A descriptor to flock on, for locks every environment of a device shares.

    Opened read-only so a file made by any user serves everyone; None when the name is not
    a regular file we can open (planted): such a lock is skipped, never waited on.
    """
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
                    f"cannot create the lock file {shown or name}: {error.strerror}"
                ) from None
        except OSError:
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd
    return None
