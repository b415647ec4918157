"""Loading, locking and saving the state files: one file per user, owned by that user.

Layout of the state folder (``GENV_TMPDIR``, default ``/var/tmp/genv``, mode 1777):

- ``state-<uid>.json``: the environments and attachments of one user. Who owns a record is
  who owns the file (the system says so), so no user can write records for another.
- ``.lock``: flocked by every command that changes state, so concurrent commands never give a
  device twice. Readers need no lock: files are replaced atomically.

Environments end when their last registered process and kernel are gone; readers drop them
on load, so this holds without any command having to run.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from genv.domain.models import Attachment, EnvConfig, Environment, RegisteredProcess
from genv.store import records, safefs
from genv.store.errors import NotFound, PermissionRefused, StateError
from genv.store.state import State, StateProblem
from genv.system import processes, users

DEFAULT_STATE_DIR = "/var/tmp/genv"
LOCK_NAME = ".lock"
# Only the canonical spelling of a uid: "state-00.json" must not pose as root's file.
_STATE_NAME = re.compile(r"^state-(0|[1-9][0-9]*)\.json$")

_UNCHANGED = object()


def state_file_name(uid: int) -> str:
    return f"state-{uid}.json"


def state_dir_from_env() -> Path:
    return Path(os.environ.get("GENV_TMPDIR") or DEFAULT_STATE_DIR)


class Store:
    """The only way into the state. ``caller_uid`` decides what the caller may change."""

    def __init__(
        self,
        root: Path | None = None,
        caller_uid: int | None = None,
        is_running: Callable[[int, float | None], bool] | None = None,
        running_kernels: Callable[[set[str]], set[str]] | None = None,
    ) -> None:
        """``is_running(pid, start_time)`` and ``running_kernels(ids)`` decide liveness; the
        daemon passes cheaper ones that remember what they saw."""
        self.root = Path(root) if root is not None else state_dir_from_env()
        self.caller_uid = os.getuid() if caller_uid is None else caller_uid
        self._dir_fd: int | None = None
        self._is_running = is_running or processes.is_running
        self._running_kernels = running_kernels or processes.running_kernel_ids
        # Decoded files by (inode, mtime, size, owner): files are replaced by rename, so an
        # unchanged key means unchanged records, and a long-lived reader skips the parsing.
        self._decoded: dict[str, tuple[tuple[int, int, int, int], tuple[list, list]]] = {}

    # -- reading -----------------------------------------------------------------------

    def read(self) -> State:
        """Every user's live environments and attachments, without taking the lock."""
        return self._load()[0]

    def _dir(self) -> int:
        if self._dir_fd is None:
            self._dir_fd = safefs.ensure_state_dir(self.root)
        return self._dir_fd

    def close(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def _load(self) -> tuple[State, dict[int, tuple[list[Environment], list[Attachment]]]]:
        dir_fd = self._dir()
        per_user: dict[int, tuple[list[Environment], list[Attachment]]] = {}
        problems: list[StateProblem] = []
        for name in sorted(os.listdir(dir_fd)):
            match = _STATE_NAME.match(name)
            if not match:
                continue
            uid = int(match.group(1))
            path = str(self.root / name)
            cached = self._cached(dir_fd, name, uid)
            if cached is not None:
                per_user[uid] = cached
                continue
            try:
                found = safefs.read_file(dir_fd, name)
            except StateError as error:
                problems.append(StateProblem(path, uid, f"cannot be read ({error})"))
                continue
            if found is None:
                continue
            data, info = found
            if info.st_uid not in (uid, 0):
                # Planted by another user: it tells nothing about ``uid``, whose records are
                # therefore known (none). The problem carries no uid, so it blocks nobody:
                # root's next write replaces the file, and a user's write is refused cleanly.
                problems.append(
                    StateProblem(
                        path,
                        None,
                        f"belongs to uid {info.st_uid}, not {uid}; ignored. "
                        f"An admin should remove it: rm {path}",
                    )
                )
                continue
            try:
                per_user[uid] = records.decode(data, uid)
                self._decoded[name] = (_stat_key(info), per_user[uid])
            except records.RecordError as error:
                problems.append(
                    StateProblem(
                        path,
                        uid,
                        f"is corrupt: {error}. Its environments are ignored; move it aside "
                        f"to start over: mv {path} {path}.bad",
                    )
                )
        state = _live_state(per_user, problems, self._is_running, self._running_kernels)
        return state, per_user

    def _cached(self, dir_fd: int, name: str, uid: int) -> tuple[list, list] | None:
        entry = self._decoded.get(name)
        if entry is None:
            return None
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return None
        if entry[0] != _stat_key(info) or info.st_uid not in (uid, 0):
            del self._decoded[name]
            return None
        return list(entry[1][0]), list(entry[1][1])

    # -- writing -----------------------------------------------------------------------

    @contextmanager
    def transaction(self, timeout: float | None = None) -> Iterator[Transaction]:
        """Lock, load, let the caller change things, then save what changed atomically.

        Nothing is saved when the block raises. With ``timeout`` a lock held elsewhere for
        longer raises StateError instead of waiting forever (the daemon must not stall).
        """
        dir_fd = self._dir()
        lock_fd = safefs.open_lock_file(dir_fd, LOCK_NAME, str(self.root / LOCK_NAME))
        try:
            _flock(lock_fd, timeout, self.root / LOCK_NAME)
            state, per_user = self._load()
            transaction = Transaction(self, state, per_user)
            yield transaction
            transaction._save(dir_fd)
        finally:
            os.close(lock_fd)


def _flock(fd: int, timeout: float | None, path: Path) -> None:
    if timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise StateError(
                    f"the state lock {path} has been held by another process for over "
                    f"{timeout:g} seconds"
                ) from None
            time.sleep(0.02)


def _stat_key(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_ino, info.st_mtime_ns, info.st_size, info.st_uid)


def _live_state(
    per_user: dict[int, tuple[list[Environment], list[Attachment]]],
    problems: list[StateProblem],
    is_running: Callable[[int, float | None], bool],
    running_kernels: Callable[[set[str]], set[str]],
) -> State:
    """Only what is still alive: environments with a running process or kernel."""
    wanted = {kernel for envs, _ in per_user.values() for env in envs for kernel in env.kernel_ids}
    kernels = running_kernels(wanted) if wanted else set()
    environments: list[Environment] = []
    for envs, _ in per_user.values():
        for env in envs:
            running = tuple(p for p in env.processes if is_running(p.pid, p.start_time))
            live_kernels = tuple(k for k in env.kernel_ids if k in kernels)
            if running or live_kernels:
                environments.append(replace(env, processes=running, kernel_ids=live_kernels))
    alive = {(env.uid, env.eid) for env in environments}
    attachments = tuple(
        a for _, items in per_user.values() for a in items if (a.uid, a.eid) in alive
    )
    return State(
        environments=tuple(environments),
        attachments=attachments,
        problems=tuple(problems),
        unreadable_uids=frozenset(p.uid for p in problems if p.uid is not None),
    )


class Transaction:
    """Changes under the lock. Every change checks that the caller may make it."""

    def __init__(
        self,
        store: Store,
        state: State,
        per_user: dict[int, tuple[list[Environment], list[Attachment]]],
    ) -> None:
        self._store = store
        self.state = state
        self._environments = list(state.environments)
        self._attachments = list(state.attachments)
        self._dirty: set[int] = set()
        self._loaded_uids = set(per_user)

    @property
    def caller_uid(self) -> int:
        return self._store.caller_uid

    @property
    def is_root(self) -> bool:
        return self._store.caller_uid == 0

    def view(self) -> State:
        """The state as it stands with this transaction's changes."""
        return replace(
            self.state,
            environments=tuple(self._environments),
            attachments=tuple(self._attachments),
        )

    # -- environments ------------------------------------------------------------------

    def environment(self, eid: str) -> Environment:
        env = self.view().environment(eid, prefer_uid=self.caller_uid)
        if env is None:
            if self.caller_uid in self.state.unreadable_uids:
                # The caller's own records are unknown: say why, not "does not exist".
                raise StateError(self._unreadable_line(self.caller_uid))
            raise NotFound(f"environment {eid} does not exist")
        return env

    def check_may_change(self, env: Environment) -> None:
        """Raise unless the caller may change ``env`` (its owner, or root)."""
        self._check_may_change(env.uid, f"environment {env.eid}")

    def _unreadable_line(self, uid: int) -> str:
        """One line naming the unusable state file of ``uid`` and how to recover."""
        for problem in self.state.problems:
            if problem.uid == uid:
                return f"nothing was changed: {problem.line()}"
        return f"nothing was changed: the state file of uid {uid} cannot be read"

    def _check_may_change(self, env_uid: int, what: str) -> None:
        if not self.is_root and env_uid != self.caller_uid:
            owner = users.username(env_uid) or f"uid {env_uid}"
            raise PermissionRefused(
                f"permission denied: {what} belongs to {owner}; only its owner or root "
                "may change it"
            )
        if env_uid in self.state.unreadable_uids:
            raise StateError(self._unreadable_line(env_uid))

    def _put(self, env: Environment) -> None:
        self._environments = [
            e for e in self._environments if not (e.eid == env.eid and e.uid == env.uid)
        ]
        self._environments.append(env)
        self._dirty.add(env.uid)

    def activate(
        self,
        eid: str,
        uid: int,
        username: str | None = None,
        pid: int | None = None,
        kernel_id: str | None = None,
    ) -> Environment:
        """Register a process or a kernel in ``eid``, creating the environment if needed."""
        if uid != self.caller_uid and not self.is_root:
            raise PermissionRefused(
                f"permission denied: only root may create environments for uid {uid}; "
                f"you are uid {self.caller_uid}"
            )
        self._check_may_change(uid, f"the state of uid {uid}")
        for other in self.view().with_eid(eid):
            if other.uid != uid:
                owner = users.username(other.uid) or f"uid {other.uid}"
                raise PermissionRefused(
                    f"permission denied: environment {eid} belongs to {owner}; choose another id"
                )
        existing = self.view().environment(eid, prefer_uid=uid)
        env = existing or Environment(
            eid=eid,
            uid=uid,
            username=username or users.username(uid),
            creation=time.time(),
        )
        if pid is not None:
            started = processes.start_time(pid)
            if started is None:
                raise NotFound(f"process {pid} does not exist")
            owner = processes.process_uid(pid)
            if not self.is_root and owner is not None and owner != self.caller_uid:
                raise PermissionRefused(
                    f"permission denied: process {pid} belongs to another user"
                )
            others = tuple(p for p in env.processes if p.pid != pid)
            env = replace(env, processes=(*others, RegisteredProcess(pid, started)))
        if kernel_id is not None and kernel_id not in env.kernel_ids:
            env = replace(env, kernel_ids=(*env.kernel_ids, kernel_id))
        if username and env.username != username:
            env = replace(env, username=username)
        self._put(env)
        return env

    def deactivate(self, pid: int | None = None, kernel_id: str | None = None) -> list[str]:
        """Unregister a process or kernel from the environments the caller may change."""
        changed = []
        for env in list(self._environments):
            if pid is not None and pid in env.pids:
                self._check_may_change(env.uid, f"environment {env.eid}")
                self._put(replace(env, processes=tuple(p for p in env.processes if p.pid != pid)))
                changed.append(env.eid)
            elif kernel_id is not None and kernel_id in env.kernel_ids:
                self._check_may_change(env.uid, f"environment {env.eid}")
                kept = tuple(k for k in env.kernel_ids if k != kernel_id)
                self._put(replace(env, kernel_ids=kept))
                changed.append(env.eid)
        if not changed and self.caller_uid in self.state.unreadable_uids:
            raise StateError(self._unreadable_line(self.caller_uid))
        return changed

    def configure(
        self,
        eid: str,
        name: object = _UNCHANGED,
        gpus: object = _UNCHANGED,
        gpu_memory: object = _UNCHANGED,
    ) -> Environment:
        """Set (a value) or clear (None) parts of the configuration of ``eid``."""
        env = self.environment(eid)
        self._check_may_change(env.uid, f"environment {eid}")
        config = env.config
        if name is not _UNCHANGED:
            config = replace(config, name=name)  # type: ignore[arg-type]
        if gpus is not _UNCHANGED:
            config = replace(config, gpus=gpus)  # type: ignore[arg-type]
        if gpu_memory is not _UNCHANGED:
            config = replace(config, gpu_memory=gpu_memory)  # type: ignore[arg-type]
            self._attachments = [
                replace(a, gpu_memory=gpu_memory) if (a.eid, a.uid) == (eid, env.uid) else a
                for a in self._attachments
            ]
        env = replace(env, config=EnvConfig(config.name, config.gpus, config.gpu_memory))
        self._put(env)
        return env

    # -- attachments -------------------------------------------------------------------

    def attach(
        self,
        eid: str,
        indices: list[int],
        over_subscribed: bool = False,
        uuids: dict[int, str] | None = None,
    ) -> None:
        env = self.environment(eid)
        self._check_may_change(env.uid, f"environment {eid}")
        held = {a.device_index for a in self.view().attachments_of(env)}
        now = time.time()
        for index in indices:
            if index in held:
                continue
            self._attachments.append(
                Attachment(
                    device_index=index,
                    eid=env.eid,
                    uid=env.uid,
                    time=now,
                    gpu_memory=env.config.gpu_memory,
                    over_subscribed=over_subscribed,
                    device_uuid=(uuids or {}).get(index),
                )
            )
        self._dirty.add(env.uid)

    def detach(self, eid: str, index: int | None = None, uid: int | None = None) -> list[int]:
        """Detach ``eid`` from device ``index`` (all devices when None); the indices removed."""
        if uid is None:
            env = self.environment(eid)
            uid = env.uid
        self._check_may_change(uid, f"environment {eid}")
        removed = [
            a.device_index
            for a in self._attachments
            if a.eid == eid and a.uid == uid and (index is None or a.device_index == index)
        ]
        self._attachments = [
            a
            for a in self._attachments
            if not (a.eid == eid and a.uid == uid and (index is None or a.device_index == index))
        ]
        if removed:
            self._dirty.add(uid)
        return removed

    # -- saving ------------------------------------------------------------------------

    def _save(self, dir_fd: int) -> None:
        for uid in sorted(self._dirty):
            if uid in self.state.unreadable_uids:
                continue  # never overwrite what we could not read
            envs = [e for e in self._environments if e.uid == uid]
            live = {e.eid for e in envs}
            items = [a for a in self._attachments if a.uid == uid and a.eid in live]
            name = state_file_name(uid)
            try:
                safefs.write_atomic(dir_fd, name, records.encode(uid, envs, items), uid)
            except PermissionError:
                raise StateError(
                    f"cannot write {self._store.root / name}: another user owns that name; "
                    "ask an admin to remove it"
                ) from None
