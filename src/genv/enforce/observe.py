"""Gathering one cycle's snapshot: GPUs from the backend, environments from the store, and the
facts of every GPU process."""

from __future__ import annotations

from collections import defaultdict

from genv.backends.base import GpuBackend
from genv.domain.models import GpuSnapshot
from genv.domain.snapshot import ObservedProcess, Snapshot, Usage, resolve
from genv.store import State, Store
from genv.system.inspect import ProcessInspector


class Observer:
    def __init__(self, backend: GpuBackend, store: Store) -> None:
        self.backend = backend
        self.store = store
        self.inspector = ProcessInspector()

    def observe(self) -> tuple[Snapshot, GpuSnapshot, State]:
        gpus = self.backend.snapshot(processes=True)
        state = self.store.read()
        return build_snapshot(gpus, state, self.inspector), gpus, state


def build_snapshot(gpus: GpuSnapshot, state: State, inspector: ProcessInspector) -> Snapshot:
    usage: dict[int, list[Usage]] = defaultdict(list)
    for process in gpus.processes:
        usage[process.pid].append(Usage(process.device_index, process.used_memory))
    observed = []
    for pid, items in sorted(usage.items()):
        facts = inspector.facts(pid)
        if facts is None:
            continue  # exited since the GPU was read
        membership, env, note = resolve(facts, state.environments, state.unreadable_uids)
        observed.append(ObservedProcess(facts, tuple(items), membership, env, note))
    inspector.retain(set(usage))
    return Snapshot(
        devices=gpus.devices,
        processes=tuple(observed),
        environments=state.environments,
        attachments=state.attachments,
        unreadable_uids=state.unreadable_uids,
    )
