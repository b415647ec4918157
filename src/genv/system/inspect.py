"""Facts about GPU processes (owner, program, claimed environment), read from /proc via psutil.

A process is (pid, start time): facts are cached under both, so a reused pid is read afresh
and a known process costs one small read per cycle.
"""

from __future__ import annotations

import psutil

from genv.domain.snapshot import ProcessFacts
from genv.system import users
from genv.system.watch import ProcessWatcher

ENV_VAR = "GENV_ENVIRONMENT_ID"


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
        claim = _claim(process)
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


_MARKER = b"\0" + ENV_VAR.encode() + b"="


def _claim(process: psutil.Process) -> tuple[str | None, bool] | None:
    """The environment ``process`` claims and whether its environment could be read at all;
    None when it is gone.

    Read straight from /proc/PID/environ and searched for the one variable: psutil's
    ``environ()`` parses every variable of every process into a dict, which was the largest
    part of a one-shot cycle.
    """
    try:
        with open(f"/proc/{process.pid}/environ", "rb") as environ:
            data = b"\0" + environ.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:  # PermissionError above all: another user's process, without root
        return None, False
    if data == b"\0":  # nothing at all: a zombie, or a process that cleared its environment
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            return None
        except psutil.Error:
            pass
        return None, True
    start = data.find(_MARKER)
    if start < 0:
        return None, True
    start += len(_MARKER)
    end = data.find(b"\0", start)
    value = data[start:] if end < 0 else data[start:end]
    return value.decode(errors="replace") or None, True
