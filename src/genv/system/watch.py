"""Knowing cheaply, cycle after cycle, which processes are still the ones we saw.

A pidfd names one process for as long as it is held, and becomes readable when that process
exits. Holding one per known process lets the daemon learn with a single ``epoll_wait`` which
of thousands exited (its cost grows with the number that exited, not with the number
watched), instead of re-reading /proc for each of them every cycle; while a process is alive
its pid cannot be reused, so what was read about it stays true.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select

from genv.domain.models import RegisteredProcess
from genv.system import procfs


def raise_open_file_limit() -> None:
    """The daemon holds one descriptor per GPU process: allow as many as the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class ProcessWatcher:
    """Tracks processes as (pid, start); ``refresh`` once per cycle, then ask freely."""

    def __init__(self, max_watched: int | None = None) -> None:
        self._fds: dict[tuple[int, int], int] = {}
        self._by_fd: dict[int, tuple[int, int]] = {}
        self._uids: dict[tuple[int, int], int | None] = {}
        self._poll = select.epoll() if hasattr(select, "epoll") else select.poll()
        self._supported = hasattr(os, "pidfd_open")
        self._max = max_watched if max_watched is not None else _fd_budget()
        self._asked: set[tuple[int, int]] = set()

    def refresh(self) -> None:
        """Start a cycle: forget processes nobody asked about during the last one, and drop
        every watched process that exited (one system call for all of them)."""
        for key in [key for key in self._fds if key not in self._asked]:
            self._drop(key)
        self._asked = set()
        if not self._fds:
            return
        while True:
            ready = self._poll.poll(0)
            dropped = 0
            for fd, _ in ready:
                found = self._by_fd.get(fd)
                if found is not None:
                    self._drop(found)
                    dropped += 1
            if len(ready) < _READY_BATCH or not dropped:
                return

    def any_exited(self) -> bool:
        """Whether some watched process has exited since the last ``refresh`` (one system
        call, nothing dropped): a reader may keep what it worked out while this is false."""
        return bool(self._fds) and bool(self._poll.poll(0))

    def is_running(self, pid: int, started: int | None) -> bool:
        """Whether the process ``pid`` that started at ``started`` still runs."""
        if started is None:
            return False
        self._asked.add((pid, started))
        if (pid, started) in self._fds:
            return True
        if procfs.start_of(pid) != started:
            return False
        self._watch(pid, started)
        return True

    def runs_as(self, process: RegisteredProcess, owner: int) -> bool:
        """Whether the registered ``process`` still runs, as ``owner`` or root (its real uid is
        read once per watched process: it does not change without privilege)."""
        if not self.is_running(process.pid, process.start):
            return False
        key = (process.pid, process.start or 0)
        if key not in self._uids or key not in self._fds:
            self._uids[key] = procfs.real_uid(process.pid)
        return self._uids[key] in (owner, 0)

    def _watch(self, pid: int, started: int) -> None:
        if not self._supported or len(self._fds) >= self._max:
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return
        # The pidfd names whoever had the pid when it was opened: check it is still the same.
        if procfs.start_of(pid) != started:
            os.close(fd)
            return
        self._fds[(pid, started)] = fd
        self._by_fd[fd] = (pid, started)
        self._poll.register(fd, select.POLLIN)  # EPOLLIN has the same value

    def _drop(self, key: tuple[int, int]) -> None:
        self._uids.pop(key, None)
        fd = self._fds.pop(key)
        del self._by_fd[fd]
        self._poll.unregister(fd)
        os.close(fd)

    def close(self) -> None:
        for key in list(self._fds):
            self._drop(key)


# epoll returns at most FD_SETSIZE-1 events per call (CPython's default maxevents): ask again
# while a call comes back full.
_READY_BATCH = 1023


def _fd_budget() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(0, soft - 256)  # leave room for everything else the daemon opens
