"""Gathering one cycle's snapshot: GPUs from the backend, environments from the store, and the
facts of every GPU process."""

from __future__ import annotations

from collections import defaultdict

from genv.backends.base import GpuBackend
from genv.domain.models import GpuSnapshot
from genv.domain.snapshot import ObservedProcess, Snapshot, Usage, index_by_eid, resolve
from genv.store import State, Store
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
    by_eid = index_by_eid(state.environments)
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
        environments=state.environments,
        attachments=state.attachments,
        unreadable_uids=state.unreadable_uids,
    )
