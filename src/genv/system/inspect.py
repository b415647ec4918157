"""Facts about GPU processes (owner, program, claimed environment), read from /proc via psutil.

A process is (pid, start time): facts are cached under both, so a reused pid is read afresh
and a known process costs one small read per cycle.
"""

from __future__ import annotations

import psutil

from genv.domain.snapshot import ProcessFacts
from genv.system import processes, users
from genv.system.watch import ProcessWatcher


class ProcessInspector:
    def __init__(self, watcher: ProcessWatcher | None = None) -> None:
        self._cache: dict[int, ProcessFacts] = {}
        self._watcher = watcher

    def still_known(self, pid: int) -> bool:
        """Whether the facts read about ``pid`` still hold: the very same process runs.

        Answered from the watcher, without reading /proc; False when it cannot tell.
        """
        cached = self._cache.get(pid)
        return (
            cached is not None
            and self._watcher is not None
            and self._watcher.is_running(pid, cached.start_time)
        )

    def facts(self, pid: int) -> ProcessFacts | None:
        """Facts about ``pid``, or None when it is gone; what cannot be read is marked."""
        if self.still_known(pid):
            return self._cache[pid]  # the very process we read before: nothing to read again
        try:
            process = psutil.Process(pid)
            started = process.create_time()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
        except psutil.AccessDenied:
            return ProcessFacts(pid, None, None, None, "?", None, environ_readable=False)
        cached = self._cache.get(pid)
        if cached is not None and cached.start_time == started:
            return cached
        try:
            uid = process.uids().real
            name = process.name()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
        except psutil.AccessDenied:
            uid, name = None, "?"
        claim = processes.environment_claim(pid)
        if claim is None:
            return None
        claimed, readable = claim
        facts = ProcessFacts(
            pid=pid,
            start_time=started,
            uid=uid,
            username=users.username(uid) if uid is not None else None,
            name=name,
            claimed_eid=claimed or None,
            environ_readable=readable,
        )
        self._cache[pid] = facts
        return facts

    def retain(self, pids: set[int]) -> None:
        """Forget processes no longer on any GPU, so the cache stays as small as the machine."""
        for pid in [pid for pid in self._cache if pid not in pids]:
            del self._cache[pid]
