"""Finding, checking, reading and decoding every user's state file, and caching the result.

Each user's current file is the first of their candidate names (genv.store.names) that is
rightfully theirs. A file whose identity (inode, times, size, owner, mode) is unchanged since
it was decoded is not read again, so a long-lived reader (the daemon) pays one ``lstat`` per
user per cycle. Problems are classified by who could fix them (see StateProblem).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from genv.domain.models import UserRecords
from genv.domain.state import StateProblem
from genv.store import codec, names, safefs

log = logging.getLogger("genv.store")

_StatKey = tuple[int, int, int, int, int, int, int]


@dataclass
class Loaded:
    """One pass over the folder: the records per uid, the problems, and each user's file."""

    records: dict[int, UserRecords] = field(default_factory=dict)
    problems: list[StateProblem] = field(default_factory=list)
    files: dict[int, str] = field(default_factory=dict)


def _key(info: os.stat_result) -> _StatKey:
    return (
        info.st_dev,
        info.st_ino,
        info.st_mtime_ns,
        info.st_ctime_ns,
        info.st_size,
        info.st_uid,
        info.st_mode,
    )


class Loader:
    def __init__(
        self,
        root: Path,
        boot_id: str,
        remove_planted: bool,
        legacy_start: codec.LegacyStart | None = None,
    ) -> None:
        """``remove_planted``: remove names planted under other users' names (root only)."""
        self.root = root
        self.boot_id = boot_id
        self.remove_planted = remove_planted
        self.legacy_start = legacy_start
        self._decoded: dict[str, tuple[_StatKey, UserRecords]] = {}
        # The last records each user's file gave, kept while their file is unusable, so
        # that root can say which devices they may still hold.
        self.last_good: dict[int, UserRecords] = {}

    def load(self, dir_fd: int, only: Callable[[int], bool] | None = None) -> Loaded:
        """Every user's records (those ``only`` accepts, when given)."""
        for _ in range(3):
            loaded, vanished = self._pass(dir_fd, only)
            if not vanished:
                return loaded
            # A file went away between the listing and the reading: its owner renamed a new
            # one into place meanwhile. Look again rather than report that user as empty.
        return loaded

    def _pass(self, dir_fd: int, only: Callable[[int], bool] | None) -> tuple[Loaded, bool]:
        loaded = Loaded()
        by_uid: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for name in os.listdir(dir_fd):
            ours = names.parse(name)
            if ours is None:
                continue
            if ours.kind == names.LOCK:
                if self.remove_planted:
                    self._check_planted(dir_fd, name, ours.uid, names.LOCK, loaded)
                continue
            if only is None or only(ours.uid):
                by_uid[ours.uid].append((ours.rank, name))
        for uid, candidates in by_uid.items():
            for _, name in sorted(candidates):
                outcome = self._read(dir_fd, name, uid, loaded)
                if outcome == "vanished":
                    return loaded, True
                if outcome == "used":
                    break
        if only is None:  # forget files that are gone, so the cache stays as small as the folder
            current = set(loaded.files.values())
            for name in [name for name in self._decoded if name not in current]:
                del self._decoded[name]
        return loaded, False

    def _check_planted(self, dir_fd: int, name: str, uid: int, kind: str, loaded: Loaded) -> bool:
        """True when ``name`` is planted; root removes it."""
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return False
        if not names.planted(info, uid, kind):
            return False
        path = self.root / name
        if self.remove_planted and safefs.remove_planted(dir_fd, name):
            log.warning(
                "removed %s, planted by uid %d under the name of uid %d", path, info.st_uid, uid
            )
        else:
            loaded.problems.append(
                StateProblem(
                    str(path),
                    None,
                    f"was planted by uid {info.st_uid} under the name of uid {uid} and is "
                    f"ignored; an admin should remove it: sudo rm -r {path}",
                )
            )
        return True

    def _read(self, dir_fd: int, name: str, uid: int, loaded: Loaded) -> str:
        """Read one candidate: "used", "planted" (try the next) or "vanished"."""
        path = str(self.root / name)
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return "vanished"
        except OSError as error:
            self._problem(loaded, path, uid, f"cannot be read ({error.strerror})", False)
            return "used"
        if names.planted(info, uid, names.STATE):
            self._check_planted(dir_fd, name, uid, names.STATE, loaded)
            return "planted"
        loaded.files[uid] = name
        if not stat.S_ISREG(info.st_mode):
            self._problem(
                loaded,
                path,
                uid,
                f"is not a regular file, so its environments are ignored; its owner should "
                f"remove it: rm -r {path}",
                True,
            )
            return "used"
        if info.st_mode & 0o022:
            self._problem(
                loaded,
                path,
                uid,
                f"can be written by other users, so it cannot be trusted; its owner should "
                f"run: chmod 644 {path}",
                True,
            )
            return "used"
        key = _key(info)
        cached = self._decoded.get(name)
        if cached is not None and cached[0] == key:
            loaded.records[uid] = cached[1]
            return "used"
        try:
            found = safefs.read_file(dir_fd, name, codec.MAX_FILE_BYTES)
        except OverflowError as error:
            self._bad(loaded, path, uid, str(error))
            return "used"
        except OSError as error:
            if error.errno in (errno.EACCES, errno.EPERM):
                loaded.problems.append(
                    StateProblem(
                        path,
                        uid,
                        f"cannot be read (permission denied); its owner should run: "
                        f"chmod 644 {path}",
                        owner_fault=True,
                        hidden=True,
                    )
                )
            else:
                self._problem(
                    loaded, path, uid, f"cannot be read ({error.strerror or error})", False
                )
            return "used"
        if found is None:
            return "vanished"
        data, opened = found
        if _key(opened)[:2] != key[:2]:
            return "vanished"  # replaced between the stat and the open: read it again
        try:
            records = codec.decode(data, uid, self.boot_id, self.legacy_start)
        except codec.RecordError as error:
            self._bad(loaded, path, uid, str(error))
            return "used"
        self._decoded[name] = (key, records)
        loaded.records[uid] = records
        self.last_good[uid] = records
        return "used"

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
