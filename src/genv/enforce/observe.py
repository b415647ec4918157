"""Gathering one cycle's observation: GPUs from the backend, environments from the store, and
the facts of every GPU process."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from genv.backends.base import GpuBackend
from genv.domain.models import Environment, GpuSnapshot
from genv.domain.observation import Observation, ObservedProcess, Usage, index_by_eid, resolve
from genv.store import State, Store
from genv.system import users
from genv.system.process_facts import ProcessInspector
from genv.system.watch import ProcessWatcher


class Observer:
    """Takes the snapshots of a long-running enforcer.

    One ProcessWatcher serves both the store (are registered processes alive?) and the
    inspector (is this still the process we read?), so a cycle in which nothing changed reads
    nothing from /proc.
    """

    def __init__(
        self, backend: GpuBackend, store: Store, watcher: ProcessWatcher | None = None
    ) -> None:
        """``watcher`` pays off from the second cycle on; a one-shot run goes without."""
        self.backend = backend
        self.store = store
        self.watcher = watcher
        self.inspector = ProcessInspector(watcher)
        self._last: tuple[Observation, GpuSnapshot, State] | None = None

    def observe(self) -> tuple[Observation, GpuSnapshot, State]:
        """The snapshot of this cycle, with the GPU reading and the state it was built from.

        When the GPUs and the state read the same as last cycle and every GPU process is still
        the very process read then, the snapshot would be built again identical: the objects
        of last cycle are returned instead (the same objects, so that callers can tell).
        """
        if self.watcher is not None:
            self.watcher.refresh()
        gpus = self.backend.snapshot(processes=True)
        state = self.store.read()
        last = self._last
        same_state = last is not None and state == last[2]
        if last is not None and same_state:
            state = last[2]  # equal: keep one object, so that callers can tell
            if gpus == last[1] and self._all_known(gpus):
                return last
        reuse = last[0] if last is not None and same_state else None
        self._last = (build_observation(gpus, state, self.inspector, reuse), gpus, state)
        return self._last

    def _all_known(self, gpus: GpuSnapshot) -> bool:
        """Whether every GPU process is still the very process read before (asking about
        each of them, so that the watcher keeps them all)."""
        known = self.inspector.still_known
        return all([known(process.pid) for process in gpus.processes])


def build_observation(
    gpus: GpuSnapshot,
    state: State,
    inspector: ProcessInspector,
    reuse: Observation | None = None,
) -> Observation:
    """The snapshot of ``gpus`` and ``state``.

    ``reuse`` is a snapshot built before from a state equal to ``state``: a process whose
    facts are the very ones read then and whose usage is the same resolves the same way, so
    its entry is taken over as it is (on a machine where a few things change per cycle, most
    of the work of a cycle).
    """
    usage: dict[int, list[tuple[int, int | None]]] = defaultdict(list)
    for process in gpus.processes:
        usage[process.pid].append((process.device_index, process.used_memory))
    if reuse is not None:
        environments = reuse.environments
        before = {process.pid: process for process in reuse.processes}
    else:
        environments = owned_by_name(state.environments)
        before = {}
    by_eid: dict[str, list[Environment]] | None = None
    observed = []
    for pid, items in sorted(usage.items()):
        facts = inspector.facts(pid)
        if facts is None:
            continue  # exited since the GPU was read
        old = before.get(pid)
        if old is not None and old.facts is facts and _same_usage(old.usage, items):
            observed.append(old)
            continue
        if by_eid is None:
            by_eid = index_by_eid(environments)
        membership, env, note = resolve(
            facts, by_eid, state.unusable_uids, state.unknown_uids, state.legacy_eids
        )
        used = tuple(Usage(index, memory) for index, memory in items)
        observed.append(ObservedProcess(facts, used, membership, env, note))
    inspector.retain(set(usage))
    return Observation(
        devices=gpus.devices,
        processes=tuple(observed),
        environments=environments,
        attachments=state.attachments,
        unusable_uids=state.unusable_uids,
    )


def _same_usage(usage: tuple[Usage, ...], items: list[tuple[int, int | None]]) -> bool:
    return len(usage) == len(items) and all(
        u.device_index == index and u.used_memory == memory
        for u, (index, memory) in zip(usage, items, strict=True)
    )


def owned_by_name(environments: tuple[Environment, ...]) -> tuple[Environment, ...]:
    """The environments with their owner's name as the system knows it.

    The name in a record is whatever its owner wrote (``genv envs activate --username``); the
    rules look users up by name (limits, exemptions, messages), so they must get the name of
    the uid that owns the record, or anyone could pose as an exempt user.
    """
    return tuple(
        env if env.username == (name := users.username(env.uid)) else replace(env, username=name)
        for env in environments
    )
