"""Taking over genv 1.4.3's state (``sudo genv migrate``, and the first root command).

Every environment of 1.4.3 that still lives becomes a record of this genv, in its owner's
own file: its processes, its Jupyter kernels, its configuration, its attachments (the same
devices, at the same times), so that switching a busy server loses nobody's GPUs and
``genv enforce`` sees every process where it was.

1.4.3's files are writable by everyone, so what they say is a claim, checked against the
system: an environment belongs to the user its live processes (and kernels) run as; a pid
counts only for a process that already ran when the file was last written (a later one reuses
the pid); an environment whose claimed owner its processes contradict is reported and left
out. The old files are then kept aside and root's marker written; taking over again changes
nothing (an environment already taken over gets nothing twice).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field

from genv.domain import allocation
from genv.domain.models import Device
from genv.store import PermissionRefused, StateError, Store
from genv.store.legacy import LegacyAttachment, LegacyEnv, LegacyState
from genv.system import kernels, procfs, users

# A pid's start and the file's time are both whole seconds at best.
TOLERANCE = 2.0


@dataclass
class TakenOver:
    """One environment as it was taken over."""

    eid: str
    uid: int
    pids: list[int]
    kernel_ids: list[str]
    devices: list[int]


@dataclass
class Outcome:
    """What a takeover did, for the log line and ``genv migrate``'s report."""

    environments: list[TakenOver] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)  # no live process or kernel: nothing to do
    refused: list[str] = field(default_factory=list)  # one line each: why left out
    notes: list[str] = field(default_factory=list)  # what 1.4.3's files held that is unusable
    kept: list[str] = field(default_factory=list)  # the backup names of 1.4.3's files
    seconds: float = 0.0

    @property
    def processes(self) -> int:
        return sum(len(env.pids) for env in self.environments)

    @property
    def kernels(self) -> int:
        return sum(len(env.kernel_ids) for env in self.environments)

    @property
    def attachments(self) -> int:
        return sum(len(env.devices) for env in self.environments)

    def summary(self) -> str:
        users_ = len({env.uid for env in self.environments})
        return (
            f"took over genv 1.4.3's state: {len(self.environments)} environments of "
            f"{users_} users ({self.processes} processes, {self.kernels} kernels, "
            f"{self.attachments} attachments), {len(self.ended)} ended ones dropped, "
            f"{len(self.refused)} refused, in {self.seconds:.2f} s"
        )

    def as_json(self) -> dict[str, object]:
        return {
            "taken_over": [vars(env) for env in self.environments],
            "ended": self.ended,
            "refused": self.refused,
            "notes": self.notes,
            "kept_aside": self.kept,
            "seconds": round(self.seconds, 4),
        }


def migrate(store: Store, devices: list[Device] | None = None) -> Outcome | None:
    """Take over the 1.4.3 state in ``store``'s folder; None when there is none.

    ``devices``: the hardware, to tell which taken-over attachments share a device beyond its
    memory (marked over-subscribed, as 1.4.3 allowed); without it, any shared device is.
    """
    if store.caller_uid != 0:
        raise PermissionRefused(
            "permission denied: only root can take over genv 1.4.3's state; run: sudo genv migrate"
        )
    begin = time.monotonic()
    found = store.legacy_state()
    if not found.files:
        return None
    outcome = Outcome(notes=list(found.notes))
    by_eid: dict[str, list[LegacyAttachment]] = defaultdict(list)
    for attachment in found.attachments:
        by_eid[attachment.eid].append(attachment)
    kernel_procs = kernels.kernel_processes(
        {k for env in found.environments for k in env.kernel_ids}
    )
    complete = True
    for env in found.environments:
        owner, pids, kernel_ids, reason = _owner(env, found, kernel_procs)
        if reason:
            outcome.refused.append(f"environment {env.eid}: {reason}")
            continue
        if owner is None:
            outcome.ended.append(env.eid)
            continue
        try:
            outcome.environments.append(
                _take(store, env, owner, pids, kernel_ids, by_eid.get(env.eid, []), devices)
            )
        except StateError as error:  # e.g. its owner's command holds their lock right now
            outcome.refused.append(f"environment {env.eid}: not taken over now ({error})")
            complete = False
    if complete:
        outcome.kept = store.keep_legacy_aside(time.strftime("%Y%m%d-%H%M%S"))
    outcome.seconds = time.monotonic() - begin
    if complete:
        store.mark_legacy_taken_over(json.dumps(outcome.as_json(), indent=1) + "\n")
    return outcome


def _owner(
    env: LegacyEnv, found: LegacyState, kernel_procs: kernels.KernelProcesses
) -> tuple[int | None, list[int], list[str], str]:
    """Who owns ``env`` by its live processes and kernels, those processes and kernels, and
    why it is refused (empty when it is not). Owner None: nothing of it lives."""
    running: dict[int, int] = {}  # pid -> real uid
    for pid in env.pids:
        start = procfs.start_of(pid)
        uid = procfs.real_uid(pid)
        if start is None or uid is None:
            continue
        written = found.envs_written
        if written is not None and procfs.ticks_to_epoch(start) > written + TOLERANCE:
            continue  # started after 1.4.3 last wrote the file: a pid reused since
        running[pid] = uid
    kernel_uids: dict[str, set[int]] = {
        k: {uid for _, _, uid in kernel_procs.get(k, [])} for k in env.kernel_ids
    }
    uids = set(running.values()) | set().union(*kernel_uids.values())
    people = uids - {0}
    claimed = env.claimed_uid
    if len(people) > 1:
        if claimed not in people:
            return (
                None,
                [],
                [],
                (
                    f"its processes run as several users ({_names(people)}), none of them the "
                    f"claimed owner {_name(claimed)}; left out"
                ),
            )
        people = {claimed}
    if people:
        owner: int | None = next(iter(people))
    elif uids:
        owner = 0
    else:
        owner = None
    kept_kernels = [k for k in env.kernel_ids if owner is not None and kernel_uids[k] & {owner, 0}]
    if claimed is not None:
        # A kernel between two processes keeps its connection file: it counts for its owner.
        for k in env.kernel_ids:
            if (
                k not in kept_kernels
                and owner in (None, claimed)
                and kernels.connection_file_kept(k, claimed)
            ):
                kept_kernels.append(k)
                owner = claimed
    if owner is None:
        return None, [], [], ""
    if claimed is not None and claimed != owner:
        return (
            None,
            [],
            [],
            (
                f"it claims to be of {_name(claimed)} but its processes run as {_name(owner)}; "
                "left out"
            ),
        )
    pids = [pid for pid, uid in running.items() if uid in (owner, 0)]
    return owner, pids, kept_kernels, ""


def _take(
    store: Store,
    env: LegacyEnv,
    owner: int,
    pids: list[int],
    kernel_ids: list[str],
    attachments: list[LegacyAttachment],
    devices: list[Device] | None,
) -> TakenOver:
    by_index = {d.index: d for d in devices or ()}
    with store.transaction(uid=owner) as tx:
        existed = tx.has(env.eid)
        for pid in pids:
            tx.activate(env.eid, pid=pid, username=env.username, creation=env.creation)
        for kernel in kernel_ids:
            tx.activate(env.eid, kernel_id=kernel, username=env.username, creation=env.creation)
        if not pids and not kernel_ids:
            raise StateError("nothing of it could be registered")
        if not existed:  # one taken over before keeps what its owner made of it since
            config = env.config
            tx.configure(env.eid, name=config.name, gpus=config.gpus, gpu_memory=config.gpu_memory)
        env_now = tx.environment(env.eid)
        mine = set(tx.attached(env.eid))
        view = tx.view()
        for attachment in sorted(attachments, key=lambda a: a.device_index):
            index = attachment.device_index
            if index in mine:
                continue
            others = [a for a in view.attachments_on(index) if a.env_key != env_now.key]
            device = by_index.get(index)
            shared = (
                bool(others)
                if device is None
                else not allocation.is_available(device, others, env_now.config.gpu_memory)
            )
            tx.attach(
                env.eid,
                index,
                over_subscribed=shared,
                uuid=device.uuid if device is not None else None,
                when=attachment.time,
            )
            view = tx.view()
        return TakenOver(env.eid, owner, pids, kernel_ids, tx.attached(env.eid))


def _name(uid: int | None) -> str:
    if uid is None:
        return "nobody"
    name = users.username(uid)
    return f"{name} (uid {uid})" if name else f"uid {uid}"


def _names(uids: set[int]) -> str:
    return ", ".join(_name(uid) for uid in sorted(uids))
