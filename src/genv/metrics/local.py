"""This machine as a usage source: GPUs through the backend, environments through the
store, and each GPU process's owner and claimed environment from /proc, resolved by the one
membership rule (genv.domain.observation.resolve). Kept open between collections, so that a
process already read is not read again while it runs."""

from __future__ import annotations

import time

from genv.backends import open_backend
from genv.backends.base import GpuBackend, TelemetrySource
from genv.metrics.source import HostSample
from genv.metrics.usage import HostUsage, build_usage
from genv.store import Store
from genv.system import users
from genv.system.process_facts import ProcessInspector
from genv.system.watch import ProcessWatcher, raise_open_file_limit


class LocalSource:
    cluster = False

    def __init__(self, backend: GpuBackend | None = None, store: Store | None = None) -> None:
        raise_open_file_limit()  # the watcher holds one descriptor per process
        self.watcher = ProcessWatcher()
        self.backend = backend if backend is not None else open_backend()
        # The registered processes have a watcher of their own (see genv enforce).
        self.store = store if store is not None else Store(watcher=ProcessWatcher())
        self.inspector = ProcessInspector(self.watcher)

    def read(self) -> HostUsage:
        """This machine now. Raises BackendError or StoreError when it cannot be read."""
        self.inspector.begin()
        gpus = self.backend.snapshot(processes=True)
        telemetry = self.backend.telemetry() if isinstance(self.backend, TelemetrySource) else ()
        state = self.store.read()
        pids = {process.pid for process in gpus.processes}
        facts = {pid: self.inspector.facts(pid) for pid in sorted(pids)}
        self.inspector.retain(pids)
        return build_usage(gpus, telemetry, state, facts, users.username, time.time())

    def collect(self) -> list[HostSample]:
        return [HostSample(None, self.read())]

    def close(self) -> None:
        self.backend.close()
        self.store.close()
        self.watcher.close()
