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
    """Tracks processes as (pid, start), in one of two ways.

    Asked (the store): ``refresh`` once per cycle, then ask freely; what nobody asked about
    during a cycle is forgotten at the next ``refresh``. Followed (the enforcer's process
    facts): ``follow`` a process, ``forget`` it when done; ``take_gone`` says which followed
    processes exited since it was last called, so that the follower looks at nothing else.
    A process may be both: ``refresh`` never drops a followed one.
    """

    def __init__(self, max_watched: int | None = None) -> None:
        self._fds: dict[tuple[int, int], int] = {}
        self._by_fd: dict[int, tuple[int, int]] = {}
        self._uids: dict[tuple[int, int], int | None] = {}
        self._poll = select.epoll() if hasattr(select, "epoll") else select.poll()
        self._supported = hasattr(os, "pidfd_open")
        self._max = max_watched if max_watched is not None else _fd_budget()
        self._asked: set[tuple[int, int]] = set()
        self._followed: set[tuple[int, int]] = set()
        self._gone: list[tuple[int, int]] = []

    def refresh(self) -> None:
        """Start a cycle: forget processes nobody asked about during the last one, and drop
        every watched process that exited (one system call for all of them)."""
        for key in [key for key in self._fds if key not in self._asked]:
            if key not in self._followed:
                self._drop(key)
        self._asked = set()
        self.drop_exited()

    def drop_exited(self) -> None:
        """Drop every watched process that exited (one system call for all of them)."""
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

    def follow(self, pid: int, started: int) -> bool:
        """Watch the process ``pid`` that started at ``started`` until ``forget``; False when
        it cannot be watched (gone, no pidfd, too many): then nothing will tell of its exit."""
        key = (pid, started)
        if key not in self._fds:
            self._watch(pid, started)
            if key not in self._fds:
                return False
        self._followed.add(key)
        return True

    def forget(self, pid: int, started: int) -> None:
        """Stop following a process (its descriptor is closed unless someone asks about it)."""
        key = (pid, started)
        if key in self._followed:
            self._followed.discard(key)
            if key in self._fds and key not in self._asked:
                self._drop(key)

    def take_gone(self) -> list[tuple[int, int]]:
        """The followed processes that exited since the last call (one system call when none
        did): they are followed no more."""
        if self._followed and self._poll.poll(0):
            self.drop_exited()
        gone, self._gone = self._gone, []
        return gone

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
        if key in self._followed:
            self._followed.discard(key)
            self._gone.append(key)
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
