"""Gathering one cycle's snapshot: GPUs from the backend, environments from the store, and the
facts of every GPU process."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from genv.backends.base import GpuBackend
from genv.domain.models import Environment, GpuSnapshot
from genv.domain.snapshot import ObservedProcess, Snapshot, Usage, index_by_eid, resolve
from genv.store import State, Store
from genv.system import users
from genv.system.inspect import ProcessInspector
from genv.system.watch import ProcessWatcher


class Observer:
    """Takes the snapshots of a long-running enforcer.

    One ProcessWatcher serves both the store (are registered processes alive?) and the
    inspector (is this still the process we read?), so a cycle in which nothing changed reads
    nothing from /proc.
    """

    def __init__(self, backend: GpuBackend, store: Store, watcher: ProcessWatcher) -> None:
        self.backend = backend
        self.store = store
        self.watcher = watcher
        self.inspector = ProcessInspector(watcher)

    def observe(self) -> tuple[Snapshot, GpuSnapshot, State]:
        self.watcher.refresh()
        gpus = self.backend.snapshot(processes=True)
        state = self.store.read()
        return build_snapshot(gpus, state, self.inspector), gpus, state


def build_snapshot(gpus: GpuSnapshot, state: State, inspector: ProcessInspector) -> Snapshot:
    usage: dict[int, list[Usage]] = defaultdict(list)
    for process in gpus.processes:
        usage[process.pid].append(Usage(process.device_index, process.used_memory))
    environments = owned_by_name(state.environments)
    by_eid = index_by_eid(environments)
    observed = []
    for pid, items in sorted(usage.items()):
        facts = inspector.facts(pid)
        if facts is None:
            continue  # exited since the GPU was read
        membership, env, note = resolve(facts, by_eid, state.unreadable_uids)
        observed.append(ObservedProcess(facts, tuple(items), membership, env, note))
    inspector.retain(set(usage))
    return Snapshot(
        devices=gpus.devices,
        processes=tuple(observed),
        environments=environments,
        attachments=state.attachments,
        unreadable_uids=state.unreadable_uids,
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
