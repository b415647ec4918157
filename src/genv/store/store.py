"""The state store: the only way into the state folder.

Layout of the folder (``GENV_TMPDIR``, default ``/var/tmp/genv``, root's, mode 1777):

- ``state-<uid>.json``: the environments and attachments of one user, owned by that user.
  Who owns a record is who owns the file (the system says so), so no user can write records
  for another. Root's own file also holds what root revoked and what users held.
- ``.lock-<uid>``: that user's writer lock, mode 0600, so only that user and root can take it.
- fallback names (``~1`` .. ``~7``) for both, when another user planted a name first.

Readers take no lock: files are replaced atomically. Writers take only their own user's lock;
that devices are never given twice across users is kept by genv.core.devices (write, then
check again). Nothing a user can open can stall another user's command or the daemon.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from contextlib import contextmanager
from pathlib import Path

from genv.domain.liveness import live_state
from genv.domain.models import Attachment, UserRecords
from genv.domain.state import State
from genv.domain.values import replace
from genv.store import legacy_files, names, safefs
from genv.store.errors import PermissionRefused, StateError
from genv.store.loader import Loaded, Loader
from genv.system import logs, processes, procfs

# What only writers, root or the daemon use is imported where it is used: a listing (the
# shell integration runs one per prompt) pays for none of it.
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from collections.abc import Iterator

    from genv.domain.liveness import KernelsAlive, ProcessAlive
    from genv.store import legacy
    from genv.store.daemon_lock import DaemonLock
    from genv.store.transaction import Transaction
    from genv.system.watch import ProcessWatcher

log = logs.logger("genv.store")

DEFAULT_STATE_DIR = safefs.DEFAULT_STATE_DIR
OWN_LOCK_TIMEOUT = 30.0  # only the user's own commands can hold it
OTHERS_LOCK_TIMEOUT = 2.0  # root acting for a user must not wait on that user for long
LIVE_STATE_REUSE = 30.0  # seconds a reader with a watcher keeps an unchanged live state
REPAIRS_PER_READ = 16
LEGACY_LIVE_REUSE = 5.0
LEGACY_PIDS = 4096


def _identity(dir_fd: int, name: str) -> tuple[int, int, int, int] | None:
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)


def state_dir_from_env() -> Path:
    return Path(os.environ.get("GENV_TMPDIR") or DEFAULT_STATE_DIR)


class Store:
    """``caller_uid`` decides what the caller may change (tests pass another uid than theirs)."""

    def __init__(
        self,
        root: Path | str | None = None,
        caller_uid: int | None = None,
        alive: ProcessAlive | None = None,
        kernels_alive: KernelsAlive | None = None,
        watcher: ProcessWatcher | None = None,
    ) -> None:
        """``alive`` and ``kernels_alive`` decide liveness (genv.domain.liveness). A reader
        that asks every second (the daemon) passes a ``watcher`` of its own instead: the
        registered processes are then followed by pidfd, and the live state is worked out
        again only when a file changed or a watched process exited (and at least every
        ``LIVE_STATE_REUSE`` seconds, so that a restarted Jupyter kernel is found again)."""
        self.root = Path(root) if root is not None else state_dir_from_env()
        self.caller_uid = os.getuid() if caller_uid is None else caller_uid
        self._watcher = watcher
        if watcher is not None:
            from genv.system import kernels

            alive = alive or watcher.runs_as
            kernels_alive = kernels_alive or kernels.KernelTracker(watcher.is_running)
        self._alive = alive or processes.registered_alive
        self._kernels_alive = kernels_alive or _running_kernels
        self._reused: tuple[object, State, float] | None = None
        self._dir_fd: int | None = None
        self._legacy_cache: tuple[tuple[object, ...], legacy.LegacyState] | None = None
        self._legacy_live_cache: tuple[tuple[object, ...], float, dict] | None = None
        self._removed = False  # the folder was removed under us: wait for it, never recreate
        # (state, root's records): found published as they hold, so not looked at again
        self._published: tuple[State, UserRecords | None] | None = None
        self.loader = self._new_loader()

    def _new_loader(self) -> Loader:
        return Loader(self.root, procfs.boot_id(), legacy_start=processes.legacy_start)

    def _is_root(self) -> bool:
        """Root, by right and in fact: only then are other users' planted names removed."""
        return self.caller_uid == 0 and os.geteuid() == 0

    # -- the folder -----------------------------------------------------------------------

    def _dir(self) -> int:
        """The folder's descriptor; opened again when the folder was replaced.

        A folder removed (or replaced) under a long-lived reader would read as empty through
        the old descriptor: that is never taken for "no environments". A folder that was
        removed is waited for (StateError until it is back), not made again empty: whoever
        removed it may be putting it back.
        """
        if self._dir_fd is not None and not safefs.same_folder(self._dir_fd, self.root):
            os.close(self._dir_fd)
            self._dir_fd = None
            if not os.path.lexists(self.root):
                self._removed = True
            else:
                log.warning("the state folder %s was replaced; reading the new one", self.root)
                self.loader = self._new_loader()
        if self._dir_fd is None:
            if self._removed:
                if not os.path.lexists(self.root):
                    raise StateError(f"the state folder {self.root} was removed; waiting for it")
                log.warning("the state folder %s is back; reading it", self.root)
                self._removed = False
                self.loader = self._new_loader()
            self._dir_fd = safefs.ensure_state_dir(self.root)
            if self._is_root():
                self._mark_if_nothing_to_take_over(self._dir_fd)
        return self._dir_fd

    def _mark_if_nothing_to_take_over(self, dir_fd: int) -> None:
        """Root, opening a folder in which genv 1.4.3 has left nothing, says so at once: any
        of its files that appear later were made by someone else, and must never count as
        1.4.3's state (they would make a user's processes "could not tell")."""
        if legacy_files.taken_over(dir_fd) or legacy_files.present(dir_fd):
            return
        with contextlib.suppress(StateError):  # (a full disk: the next opening tries again)
            legacy_files.mark(
                dir_fd, legacy_files.NOTHING_TAKEN_OVER, str(self.root / legacy_files.MARKER)
            )

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    # -- reading --------------------------------------------------------------------------

    def read(self) -> State:
        """Every user's live environments and attachments, without taking any lock.

        What was read from a folder that was removed or replaced meanwhile (a dying folder
        lists fewer files, or none) is thrown away: the new folder is read, or StateError
        says the folder is gone.
        """
        for _ in range(3):
            state, _ = self.read_with_records()
            if self._dir_fd is not None and safefs.same_folder(self._dir_fd, self.root):
                return state
        raise StateError(f"the state folder {self.root} keeps changing while it is read")

    def read_with_records(self) -> tuple[State, Loaded]:
        dir_fd = self._dir()
        loaded = self.loader.load(dir_fd)
        if loaded.planted and self._is_root():
            self._repair(dir_fd, loaded)
        state = self._live(loaded)
        if self.loader.listed(legacy_files.FILES) is not False and legacy_files.pending(dir_fd):
            eids, held = self._legacy_claims(dir_fd)
            state = replace(state, legacy_eids=eids, legacy_held=held)
        return state, loaded

    def _repair(self, dir_fd: int, loaded: Loaded) -> None:
        """Root replaces names other users planted under a user's names (a few a pass, each
        in one system call, so that planting many costs root nothing much): a lock name gets
        the user's own lock file in the same rename, so that it can never be taken again; a
        state name of a user who has no file gets an empty file of theirs; any other is
        freed. What was planted under a name of no user is only freed."""
        from genv.store import codec
        from genv.store.locks import LOCK_MODE
        from genv.system import users

        for name, uid in loaded.planted[:REPAIRS_PER_READ]:
            planter = self._owner(dir_fd, name)
            ours = names.parse(name)
            real_user = users.username(uid) is not None
            if ours is not None and ours.kind == names.LOCK and real_user:
                done = safefs.install_rightful(dir_fd, name, b"", uid, LOCK_MODE)
            elif ours is not None and uid not in loaded.files and real_user and ours.rank == 0:
                empty = codec.encode(UserRecords(uid), procfs.boot_id())
                done = safefs.install_rightful(dir_fd, name, empty, uid, safefs.FILE_MODE)
            else:
                done = safefs.clear_planted(dir_fd, name)
            if done:
                log.warning("replaced %s, which uid %d had planted", self.root / name, planter)

    @staticmethod
    def _owner(dir_fd: int, name: str) -> int:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_uid
        except OSError:
            return -1

    def _live(self, loaded: Loaded) -> State:
        if self._watcher is None:
            return live_state(loaded.records, loaded.problems, self._alive, self._kernels_alive)
        # The loader hands back the very same records objects for unchanged files.
        key = (
            tuple((uid, id(r)) for uid, r in sorted(loaded.records.items())),
            tuple(loaded.problems),
        )
        now = time.monotonic()
        reused = self._reused
        if (
            reused is not None
            and reused[0] == key
            and now - reused[2] < LIVE_STATE_REUSE
            and not self._watcher.any_exited()
        ):
            return reused[1]
        self._watcher.refresh()  # drop the exited, forget the no longer registered
        state = live_state(loaded.records, loaded.problems, self._alive, self._kernels_alive)
        self._reused = (key, state, now)
        return state

    # -- genv 1.4.3's state ---------------------------------------------------------------

    def legacy_pending(self) -> bool:
        """Whether the folder holds genv 1.4.3's state that root has not taken over."""
        return legacy_files.pending(self._dir())

    def legacy_taken_over(self) -> bool:
        """Whether root has taken over 1.4.3's state in this folder already."""
        return legacy_files.taken_over(self._dir())

    def legacy_state(self) -> legacy.LegacyState:
        from genv.store import legacy

        return legacy.read(self._dir())

    def keep_legacy_aside(self, stamp: str) -> list[str]:
        """Rename 1.4.3's files out of the way (root only); their new names."""
        self._require_root("keep genv 1.4.3's files aside")
        return legacy_files.keep_aside(self._dir(), stamp)

    def mark_legacy_taken_over(self, text: str) -> None:
        self._require_root("take genv 1.4.3's state over")
        legacy_files.mark(self._dir(), text, str(self.root / legacy_files.MARKER))

    def _require_root(self, what: str) -> None:
        if not self._is_root():
            raise PermissionRefused(f"permission denied: only root may {what}; run it with sudo")

    def _legacy_claims(self, dir_fd: int) -> tuple[frozenset[str], tuple[Attachment, ...]]:
        """What 1.4.3's files claim, read again only when they changed: every id, and the
        attachments of the environments of which some process or kernel may still run."""
        key = tuple(_identity(dir_fd, name) for name in legacy_files.FILES)
        if self._legacy_cache is not None and self._legacy_cache[0] == key:
            found = self._legacy_cache[1]
        else:
            from genv.store import legacy

            found = legacy.read(dir_fd)
            self._legacy_cache = (key, found)
        maybe_live = self._legacy_live(key, found)
        held = tuple(
            Attachment(
                device_index=a.device_index,
                eid=a.eid,
                uid=maybe_live[a.eid].claimed_uid or 0,
                time=a.time or 0.0,
                gpu_memory=a.gpu_memory,
            )
            for a in found.attachments
            if a.eid in maybe_live
        )
        return found.eids, held

    def _legacy_live(self, key: tuple[object, ...], found: legacy.LegacyState) -> dict:
        """The 1.4.3 environments some process or kernel of which may still run; worked out
        again when the files change or every LEGACY_LIVE_REUSE seconds, and for at most
        LEGACY_PIDS pids in all, so that no content of those files can slow a reader."""
        now = time.monotonic()
        cached = self._legacy_live_cache
        if cached is not None and cached[0] == key and now - cached[1] < LEGACY_LIVE_REUSE:
            return cached[2]
        budget = LEGACY_PIDS
        live = {}
        for env in found.environments:
            pids = env.pids[: max(0, budget)]
            budget -= len(pids)
            if env.kernel_ids or any(procfs.start_of(pid) is not None for pid in pids):
                live[env.eid] = env
        self._legacy_live_cache = (key, now, live)
        return live

    def publish_holdings(self, state: State) -> bool:
        """Root says, in its own file, which devices every user holds, so that while a user's
        file cannot be used (by the others, who may not read it; or by anyone, while it is
        corrupt) the devices it may hold are not given to someone else. For such a user the
        last records root could read count, as long as their processes live. True when
        something was written (only when it changed)."""
        if not self._is_root() or state.problem_of(0) is not None:
            return False  # (root's own file is unusable: that is said already)
        published = self.loader.last_good.get(0)  # root's own file, as last read
        if self._published is not None and (
            self._published[0] is state and self._published[1] is published
        ):
            return False  # what was found published for this very state, as read then
        unusable = state.unusable_uids
        held = [a for a in state.attachments if a.uid not in unusable]
        last = {uid: r for uid, r in self.loader.last_good.items() if uid in unusable}
        if last:
            held += live_state(last, (), self._alive, self._kernels_alive).attachments
        key = sorted((a.uid, a.eid, a.device_index, a.time) for a in held)
        if (
            published is not None
            and published.holdings_published
            and key == sorted((a.uid, a.eid, a.device_index, a.time) for a in published.holdings)
        ):
            # Kept only while nobody's file is unusable: then what is held is the state's
            # attachments alone (otherwise their processes' lives count, which change).
            self._published = (state, published) if not last else None
            return False
        with self.transaction(timeout=1.0) as tx:
            tx.set_holdings(held)
        return True

    def daemon_lock(self) -> DaemonLock:
        """The lock that makes this the only enforcing daemon on the folder (see daemon_lock);
        raises AlreadyRunning, naming the one that runs."""
        from genv.store import daemon_lock

        return daemon_lock.take(self._dir(), self.root)

    # -- writing --------------------------------------------------------------------------

    @contextmanager
    def transaction(
        self, uid: int | None = None, timeout: float | None = None
    ) -> Iterator[Transaction]:
        """Lock ``uid``'s records (the caller's by default), load, change, save.

        Nothing is saved when the block raises. Only root may change another user's records.
        """
        uid = self.caller_uid if uid is None else uid
        if uid != self.caller_uid and self.caller_uid != 0:
            raise PermissionRefused(
                f"permission denied: the records of uid {uid} are theirs; only they or root "
                "may change them"
            )
        if timeout is None:
            timeout = OWN_LOCK_TIMEOUT if uid == self.caller_uid else OTHERS_LOCK_TIMEOUT
        from genv.store.locks import user_lock
        from genv.store.transaction import Transaction

        dir_fd = self._dir()
        with user_lock(dir_fd, uid, str(self.root), timeout):
            state, loaded = self.read_with_records()
            transaction = Transaction(self, uid, state, loaded.records, dir_fd)
            yield transaction
            transaction.save()

    def _write(self, dir_fd: int, uid: int, data: bytes) -> None:
        """Write ``uid``'s file under the first name that is free or theirs; then remove
        the other names of theirs, so that exactly one file is theirs."""
        target = None
        own: list[str] = []
        for name in names.state_names(uid):
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                if target is None:
                    target = name
                continue
            if not names.planted(info, uid, names.STATE):
                own.append(name)
                if target is None:
                    target = name
            elif self._is_root() and target is None:
                # root's rename replaces what was planted in one step; only a folder must
                # be moved out of the way first
                if stat.S_ISDIR(info.st_mode):
                    safefs.clear_planted(dir_fd, name)
                target = name
        if target is None:
            raise StateError(
                f"every state file name of uid {uid} in {self.root} is taken by another "
                f"user's file; an admin should remove them: sudo rm {self.root}/state-{uid}*"
            )
        safefs.write_atomic(dir_fd, target, data, uid, str(self.root / target))
        for name in own:
            if name != target:
                try:
                    os.unlink(name, dir_fd=dir_fd)
                except OSError:
                    log.warning("could not remove the old state file %s", self.root / name)


def _running_kernels(owner: int, wanted: frozenset[str]) -> set[str]:
    """genv.system.kernels.running_kernels, imported when some environment has a kernel."""
    from genv.system import kernels

    return kernels.running_kernels(owner, wanted)
