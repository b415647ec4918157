"""Changes to one user's records, under that user's lock, with every permission checked.

A transaction changes the records of exactly one uid: the caller's own, or (root only) those
of the user it acts for. It starts from the live view, so ended environments and revoked
attachments drop out of the file on its next write. Root takes back other users'
attachments and environments by revoking them in its own file (``revoke``), never by
writing theirs, so no user can stall root.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from genv.domain import validate
from genv.domain.models import (
    Attachment,
    EnvConfig,
    Environment,
    RegisteredProcess,
    Revocation,
    UserRecords,
)
from genv.domain.state import State
from genv.domain.values import replace
from genv.store import codec
from genv.store.errors import NotFound, PermissionRefused, StateError
from genv.system import procfs

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from genv.store.store import Store

UNCHANGED: object = object()


class Transaction:
    """Changes to the records of ``uid``; saved by ``save()`` and when the block ends."""

    def __init__(
        self, store: Store, uid: int, state: State, raw: dict[int, UserRecords], dir_fd: int
    ) -> None:
        self._store = store
        self.uid = uid
        self.state = state
        self._raw = raw
        self._dir_fd = dir_fd
        self._environments = [env for env in state.environments if env.uid == uid]
        self._attachments = [a for a in state.attachments if a.uid == uid]
        own = raw.get(uid)
        self._revocations = list(own.revocations) if own is not None else []
        self._holdings = list(own.holdings) if own is not None else []
        self._published = own.holdings_published if own is not None else False
        self._dirty = False

    @property
    def caller_uid(self) -> int:
        return self._store.caller_uid

    @property
    def is_root(self) -> bool:
        return self._store.caller_uid == 0

    def view(self) -> State:
        """Every user's state, with this transaction's changes."""
        return State(
            environments=tuple(e for e in self.state.environments if e.uid != self.uid)
            + tuple(self._environments),
            attachments=tuple(a for a in self.state.attachments if a.uid != self.uid)
            + tuple(self._attachments),
            problems=self.state.problems,
            holdings=self.state.holdings,
            holdings_published=self.state.holdings_published,
            legacy_eids=self.state.legacy_eids,
            legacy_held=self.state.legacy_held,
        )

    # -- environments ---------------------------------------------------------------------

    def environment(self, eid: str) -> Environment:
        """The environment ``eid`` of this transaction's user."""
        for env in self._environments:
            if env.eid == eid:
                return env
        raise NotFound(f"environment {eid} does not exist")

    def has(self, eid: str) -> bool:
        return any(env.eid == eid for env in self._environments)

    def _put(self, env: Environment) -> None:
        self._environments = [e for e in self._environments if e.eid != env.eid] + [env]
        self._dirty = True

    def activate(
        self,
        eid: str,
        pid: int | None = None,
        kernel_id: str | None = None,
        username: str | None = None,
        creation: float | None = None,
    ) -> Environment:
        """Register a process or a kernel in ``eid``, creating the environment if needed
        (``creation``: when it was created, now by default; genv 1.4.3's are older).

        The process must run as this environment's owner (or root): someone else's process
        would not keep it alive anyway, and must not be able to.
        """
        eid = validate.environment_id(eid)
        if username is not None:
            username = validate.username(username)
        env = next((e for e in self._environments if e.eid == eid), None)
        if env is None:
            if len(self._environments) >= codec.MAX_ENVIRONMENTS:
                raise StateError(
                    f"uid {self.uid} already has {codec.MAX_ENVIRONMENTS} environments; "
                    "end some first"
                )
            env = Environment(
                eid=eid,
                uid=self.uid,
                username=username,
                creation=time.time() if creation is None else creation,
            )
        if pid is not None:
            pid = validate.pid(pid)
            start = procfs.start_of(pid)
            if start is None:
                raise NotFound(f"process {pid} does not exist")
            owner = procfs.real_uid(pid)
            if owner not in (self.uid, 0):
                raise PermissionRefused(
                    f"permission denied: process {pid} belongs to another user and cannot be "
                    f"registered in an environment of uid {self.uid}"
                )
            others = tuple(p for p in env.processes if p.pid != pid)
            if len(others) >= codec.MAX_PROCESSES_PER_ENV:
                raise StateError(f"environment {eid} has too many processes registered")
            env = replace(env, processes=(*others, RegisteredProcess(pid, start)))
        if kernel_id is not None:
            kernel_id = validate.kernel_id(kernel_id)
            if kernel_id not in env.kernel_ids:
                if len(env.kernel_ids) >= codec.MAX_KERNELS_PER_ENV:
                    raise StateError(f"environment {eid} has too many kernels registered")
                env = replace(env, kernel_ids=(*env.kernel_ids, kernel_id))
        self._put(env)  # (a name is given on creation only, as in genv 1.4.3)
        return env

    def deactivate(self, pid: int | None = None, kernel_id: str | None = None) -> list[str]:
        """Unregister a process or kernel; the ids of the environments it left."""
        changed = []
        for env in list(self._environments):
            if pid is not None and pid in env.pids:
                self._put(replace(env, processes=tuple(p for p in env.processes if p.pid != pid)))
                changed.append(env.eid)
            elif kernel_id is not None and kernel_id in env.kernel_ids:
                self._put(
                    replace(env, kernel_ids=tuple(k for k in env.kernel_ids if k != kernel_id))
                )
                changed.append(env.eid)
        return changed

    def end(self, eid: str) -> None:
        """End environment ``eid`` now: unregister everything in it, detach its devices."""
        self.environment(eid)
        self._environments = [e for e in self._environments if e.eid != eid]
        self._attachments = [a for a in self._attachments if a.eid != eid]
        self._dirty = True

    def configure(
        self,
        eid: str,
        name: object = UNCHANGED,
        gpus: object = UNCHANGED,
        gpu_memory: object = UNCHANGED,
    ) -> Environment:
        """Set (a value) or clear (None) parts of the configuration of ``eid``."""
        env = self.environment(eid)
        config = env.config
        if name is not UNCHANGED:
            config = replace(config, name=None if name is None else validate.environment_name(name))
        if gpus is not UNCHANGED:
            config = replace(config, gpus=None if gpus is None else validate.count(gpus))
        if gpu_memory is not UNCHANGED:
            amount = None if gpu_memory is None else validate.memory_amount(gpu_memory)
            config = replace(config, gpu_memory=amount)
            self._attachments = [
                replace(a, gpu_memory=amount) if a.eid == eid else a for a in self._attachments
            ]
        env = replace(env, config=EnvConfig(config.name, config.gpus, config.gpu_memory))
        self._put(env)
        return env

    # -- attachments ----------------------------------------------------------------------

    def attached(self, eid: str) -> list[int]:
        return sorted(a.device_index for a in self._attachments if a.eid == eid)

    def attach(
        self,
        eid: str,
        index: int,
        over_subscribed: bool = False,
        uuid: str | None = None,
        when: float | None = None,
    ) -> None:
        """Attach device ``index`` (``when``: the time of the attachment, now by default)."""
        env = self.environment(eid)
        index = validate.device_index(index)
        if index in self.attached(eid):
            return
        self._attachments.append(
            Attachment(
                device_index=index,
                eid=env.eid,
                uid=env.uid,
                time=time.time() if when is None else when,
                gpu_memory=env.config.gpu_memory,
                over_subscribed=over_subscribed,
                device_uuid=uuid,
            )
        )
        self._dirty = True

    def detach(self, eid: str, index: int | None = None) -> list[int]:
        """Detach ``eid`` from device ``index`` (all devices when None); the indices removed."""
        removed = [
            a.device_index
            for a in self._attachments
            if a.eid == eid and (index is None or a.device_index == index)
        ]
        if removed:
            self._attachments = [
                a
                for a in self._attachments
                if not (a.eid == eid and (index is None or a.device_index == index))
            ]
            self._dirty = True
        return removed

    # -- root's own records ---------------------------------------------------------------

    def revoke(
        self,
        attachments: Sequence[Attachment] = (),
        environments: Sequence[Environment] = (),
    ) -> None:
        """Root takes back other users' attachments or whole environments (root's file)."""
        if self.uid != 0:
            raise PermissionRefused("permission denied: only root revokes; run it with sudo")
        known = set(self._revocations)
        for a in attachments:
            item = Revocation(a.uid, a.eid, a.device_index, a.time)
            if item not in known:
                self._revocations.append(item)
                known.add(item)
        for env in environments:
            item = Revocation(env.uid, env.eid, None, env.creation)
            if item not in known:
                self._revocations.append(item)
                known.add(item)
        self._dirty = True

    def set_holdings(self, holdings: list[Attachment]) -> None:
        if self.uid != 0:
            raise PermissionRefused("permission denied: only root publishes holdings")
        changed = sorted(holdings, key=_holding_key) != sorted(self._holdings, key=_holding_key)
        if changed or not self._published:
            self._holdings = list(holdings)
            self._published = True
            self._dirty = True

    # -- saving ---------------------------------------------------------------------------

    def save(self) -> None:
        """Write this user's file now if anything changed (it may be called more than once)."""
        if not self._dirty:
            return
        problem = self.state.problem_of(self.uid)
        if problem is not None:  # never overwrite what could not be read
            raise StateError(f"nothing was changed: {problem.line()}")
        if self.uid in self._store.loader.files_seen and self.uid not in self._raw:
            raise StateError(  # a file is there, but its records were not read: keep it
                f"nothing was changed: the state file of uid {self.uid} could not be read; "
                "try again"
            )
        live = {env.eid for env in self._environments}
        records = UserRecords(
            uid=self.uid,
            environments=tuple(self._environments),
            attachments=tuple(a for a in self._attachments if a.eid in live),
            revocations=tuple(self._live_revocations()),
            holdings=tuple(self._holdings),
            holdings_published=self._published,
        )
        if len(records.revocations) > codec.MAX_REVOCATIONS or len(records.holdings) > (
            codec.MAX_HOLDINGS
        ):
            raise StateError(  # a file its readers would refuse: write none
                f"nothing was changed: the records of uid {self.uid} would hold more "
                f"revocations or holdings than genv reads back"
            )
        data = codec.encode(records, procfs.boot_id())
        if len(data) > codec.max_bytes(self.uid):
            raise StateError(
                f"nothing was changed: the state file of uid {self.uid} would be larger than "
                f"the {codec.max_bytes(self.uid)} bytes genv reads back"
            )
        self._store._write(self._dir_fd, self.uid, data)
        self._dirty = False

    def _live_revocations(self) -> list[Revocation]:
        """Revocations whose target is still in its owner's file; the others are done."""
        targets: set[tuple[int, str, int | None, float]] = set()
        for records in self._raw.values():
            for env in records.environments:
                targets.add((env.uid, env.eid, None, env.creation))
            for a in records.attachments:
                targets.add((a.uid, a.eid, a.device_index, a.time))
        return [
            r
            for r in self._revocations
            if (r.uid, r.eid, r.device, r.time) in targets or r.uid not in self._raw
        ]


def _holding_key(item: Attachment) -> tuple[int, str, int, float]:
    return (item.uid, item.eid, item.device_index, item.time)
