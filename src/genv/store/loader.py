"""Finding, checking, reading and decoding every user's state file, and caching the result.

The folder's listing says which users have a file; each user's current file is then the
first of their candidate names (genv.store.names) that is rightfully theirs, looked up by
name, so nothing another user does to other names can make a user's file be missed. A file
that is replaced while it is read is read again; one that keeps changing is its owner's
problem. Nothing is removed here: reading never deletes (root repairs planted names on
its write paths, genv.store.store).

A file whose identity (inode, times, size, owner, mode) is unchanged since it was decoded
is not read again, and the listing itself is kept while the folder is unchanged, so a
long-lived reader (the daemon) pays about one ``lstat`` per user per cycle. Problems are
classified by who could fix them (see StateProblem): everything about a file its owner
controls is the owner's doing, except the few errors only the reading side can cause.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from genv.domain.models import UserRecords
from genv.domain.state import StateProblem
from genv.store import codec, names, safefs

_StatKey = tuple[int, int, int, int, int, int, int, int]

# Errors of the reading side (memory, descriptors, the disk failing): the owner's records are
# then unknown, not absent. Anything else about a file the owner controls (a lease, a mode,
# a mount over it) is the owner's doing.
READER_ERRNOS = frozenset({errno.EIO, errno.ENOMEM, errno.EMFILE, errno.ENFILE})
# A folder's or file's times have the coarse clock's resolution: a listing, or a file's
# decoded records, is kept only once it has been unchanged for this long, so that no change
# made in the same tick as the reading can go unseen.
SETTLED_SECONDS = 1.0
_ATTEMPTS = 5


class _Listing:
    """What a folder's entries say, kept while the folder is unchanged (see ``_users``)."""

    def __init__(
        self,
        key: tuple[int, int, int],
        uids: list[int],
        lock_names: list[str],
        names: frozenset[str],
    ) -> None:
        self.key = key
        self.uids = uids
        self.lock_names = lock_names
        self.names = names
        # The planted lock names, as found (an entry's owner changes only by root's chown,
        # or by replacing the entry, which changes the folder).
        self.planted_locks: list[tuple[str, int, StateProblem]] | None = None


class Loaded:
    """One pass over the folder: the records per uid, the problems, and each user's file."""

    def __init__(self) -> None:
        self.records: dict[int, UserRecords] = {}
        self.problems: list[StateProblem] = []
        self.files: dict[int, str] = {}
        self.planted: list[tuple[str, int]] = []  # (name, uid it poses as)


def _key(info: os.stat_result) -> _StatKey:
    return (
        info.st_dev,
        info.st_ino,
        info.st_mtime_ns,
        info.st_ctime_ns,
        info.st_size,
        info.st_uid,
        info.st_mode,
        info.st_nlink,
    )


class Loader:
    def __init__(
        self,
        root: Path,
        boot_id: str,
        legacy_start: codec.LegacyStart | None = None,
    ) -> None:
        self.root = root
        self.boot_id = boot_id
        self.legacy_start = legacy_start
        self._decoded: dict[str, tuple[_StatKey, UserRecords]] = {}
        self._listing: _Listing | None = None
        self._listing_used: _Listing | None = None  # the listing of the last load
        # The last records each user's file gave, kept while their file is unusable, so
        # that root can say which devices they may still hold.
        self.last_good: dict[int, UserRecords] = {}
        self.files_seen: set[int] = set()  # users who had a rightful file in the last load

    def load(self, dir_fd: int, only: Callable[[int], bool] | None = None) -> Loaded:
        """Every user's records (those ``only`` accepts, when given)."""
        loaded = Loaded()
        listing = self._users(dir_fd)
        self._listing_used = listing
        for uid in listing.uids:
            if (only is None or only(uid)) and not self._unchanged(dir_fd, uid, loaded):
                self._load_user(dir_fd, uid, loaded)
        if listing.planted_locks is None:
            start = len(loaded.planted)
            problems = len(loaded.problems)
            for name in listing.lock_names:
                ours = names.parse(name)
                if ours is not None:
                    self._note_planted(dir_fd, name, ours.uid, names.LOCK, loaded)
            found = loaded.planted[start:]
            listing.planted_locks = [
                (name, uid, problem)
                for (name, uid), problem in zip(found, loaded.problems[problems:], strict=True)
            ]
            if listing is not self._listing:
                listing.planted_locks = None  # not kept: look again next time
        else:
            for name, uid, problem in listing.planted_locks:
                loaded.planted.append((name, uid))
                loaded.problems.append(problem)
        if only is None:  # forget files that are gone, so the cache stays as small as the folder
            self.files_seen = set(loaded.files)
            current = set(loaded.files.values())
            for name in [name for name in self._decoded if name not in current]:
                del self._decoded[name]
        return loaded

    def listed(self, entries: tuple[str, ...]) -> bool | None:
        """Whether the folder, as the last ``load`` listed it, has any of ``entries``; None
        when that listing was not kept (the folder had just changed: look)."""
        listing = self._listing
        if listing is None or self._listing_used is not listing:
            return None
        return not listing.names.isdisjoint(entries)

    def _users(self, dir_fd: int) -> _Listing:
        """The uids that have a state file name in the folder, and the lock names there."""
        info = os.fstat(dir_fd)
        key = (info.st_dev, info.st_ino, info.st_mtime_ns)
        if self._listing is not None and self._listing.key == key:
            return self._listing
        uids: set[int] = set()
        lock_names = []
        entries = os.listdir(dir_fd)
        for name in entries:
            ours = names.parse(name)
            if ours is None:
                continue
            if ours.kind == names.STATE:
                uids.add(ours.uid)
            else:
                lock_names.append(name)
        listing = _Listing(key, sorted(uids), lock_names, frozenset(entries))
        if time.time() - info.st_mtime_ns / 1e9 > SETTLED_SECONDS:
            self._listing = listing
        else:
            self._listing = None
        return listing

    def _unchanged(self, dir_fd: int, uid: int, loaded: Loaded) -> bool:
        """Take ``uid``'s records as decoded before when their file is the very one decoded
        then (the usual case, for a daemon): its first name, whose status is the same in
        every field the decoding depended on (a file decoded was rightfully the user's, and
        what made it so is in that status). Otherwise False: ``_load_user`` looks."""
        name = names.state_names(uid)[0]
        cached = self._decoded.get(name)
        if cached is None:
            return False
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return False
        if _key(info) != cached[0]:
            return False
        loaded.files[uid] = name
        loaded.records[uid] = cached[1]
        return True

    def _load_user(self, dir_fd: int, uid: int, loaded: Loaded) -> None:
        for _ in range(_ATTEMPTS):
            if self._try_user(dir_fd, uid, loaded):
                return
            # A file went away, or was replaced, between looking and reading: its owner
            # renamed a new one into place meanwhile. Look again.
        path = str(self.root / names.state_name(uid))
        self._problem(
            loaded,
            path,
            uid,
            "keeps changing while it is read; its owner should stop doing that",
            True,
        )

    def _try_user(self, dir_fd: int, uid: int, loaded: Loaded) -> bool:
        """Read ``uid``'s current file; False when it changed under us (read again)."""
        for name in names.state_names(uid):
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as error:
                self._os_problem(loaded, str(self.root / name), uid, error)
                return True
            if names.planted(info, uid, names.STATE):
                self._note_planted(dir_fd, name, uid, names.STATE, loaded, info)
                continue
            return self._read(dir_fd, name, uid, info, loaded)
        return True  # no file: no records

    def _note_planted(
        self,
        dir_fd: int,
        name: str,
        uid: int,
        kind: str,
        loaded: Loaded,
        info: os.stat_result | None = None,
    ) -> None:
        if info is None:
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                return
        if not names.planted(info, uid, kind):
            return
        path = self.root / name
        loaded.planted.append((name, uid))
        loaded.problems.append(
            StateProblem(
                str(path),
                None,
                f"was planted by uid {info.st_uid} under the name of uid {uid} and is "
                f"ignored; root replaces it on its next write (or: sudo rm -r {path})",
            )
        )

    def _read(self, dir_fd: int, name: str, uid: int, info: os.stat_result, loaded: Loaded) -> bool:
        loaded.files[uid] = name
        key = _key(info)
        cached = self._decoded.get(name)
        if cached is not None and cached[0] == key:  # (it was a regular file, rightly kept)
            loaded.records[uid] = cached[1]
            return True
        path = str(self.root / name)
        if not stat.S_ISREG(info.st_mode):
            self._problem(
                loaded,
                path,
                uid,
                f"is not a regular file, so its environments are ignored; its owner should "
                f"remove it: rm -r {path}",
                True,
            )
            return True
        if info.st_mode & 0o022 or info.st_nlink != 1:
            self._problem(
                loaded,
                path,
                uid,
                "can be written by other users (or has other names), so it cannot be trusted; "
                f"its owner should rewrite it: cp {path} {path}.new && mv {path}.new {path} "
                f"&& chmod 644 {path}",
                True,
            )
            return True
        try:
            found = safefs.read_file(dir_fd, name, codec.max_bytes(uid))
        except OverflowError as error:
            self._bad(loaded, path, uid, str(error))
            return True
        except OSError as error:
            if error.errno == errno.ENOENT:
                return False
            self._os_problem(loaded, path, uid, error)
            return True
        if found is None:
            return False
        data, opened = found
        if _key(opened)[:2] != key[:2]:
            return False  # replaced between the stat and the open: read it again
        try:
            records = codec.decode(data, uid, self.boot_id, self.legacy_start)
        except codec.RecordError as error:
            self._bad(loaded, path, uid, str(error))
            return True
        if time.time() - info.st_ctime_ns / 1e9 > SETTLED_SECONDS:
            # Kept only once settled: a rewrite in place of the same size within one tick of
            # the coarse clock leaves every field of the status as it was (ctime too), so a
            # file changed that recently is decoded again next time.
            self._decoded[name] = (key, records)
        loaded.records[uid] = records
        self.last_good[uid] = records
        return True

    def _os_problem(self, loaded: Loaded, path: str, uid: int, error: OSError) -> None:
        if error.errno in READER_ERRNOS:
            self._problem(loaded, path, uid, f"cannot be read ({error.strerror or error})", False)
            return
        hint = f"its owner should run: chmod 644 {path}"
        if error.errno not in (errno.EACCES, errno.EPERM):
            hint = f"its owner should rewrite it, or move it aside: mv {path} {path}.bad"
        loaded.problems.append(
            StateProblem(
                path,
                uid,
                f"cannot be read ({error.strerror or error}); {hint}",
                owner_fault=True,
                hidden=True,
            )
        )

    def _bad(self, loaded: Loaded, path: str, uid: int, reason: str) -> None:
        self._problem(
            loaded,
            path,
            uid,
            f"is corrupt: {reason}. Its environments are ignored; move it aside to start "
            f"over: mv {path} {path}.bad",
            True,
        )

    @staticmethod
    def _problem(loaded: Loaded, path: str, uid: int, message: str, owner_fault: bool) -> None:
        loaded.problems.append(StateProblem(path, uid, message, owner_fault))
