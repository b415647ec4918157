"""Carrying a plan out: signalling the very processes the snapshot saw, and detaching.

Termination is SIGTERM, then SIGKILL for a process still there after the grace period. A
process is signalled through a pidfd opened and then checked against the start time seen in
the snapshot, so a pid that was reused by another process is never hit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import psutil

from genv.enforce.findings import Detachment, Termination
from genv.store import Store, StoreError
from genv.system.processes import START_TIME_TOLERANCE, start_time


class Outcome(Enum):
    SIGNALLED = "signalled"
    GONE = "gone"  # exited before we got to it: not an error
    REUSED = "reused"  # the pid now names another process: left alone
    DENIED = "permission-denied"
    REFUSED = "refused"  # never signalled: init, genv enforce itself, unknown start time
    DRY_RUN = "dry-run"


@dataclass
class _Pending:
    termination: Termination
    handle: int | psutil.Process  # a pidfd, or psutil's identity-checking handle
    deadline: float


def _pidfd_supported() -> bool:
    return hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")


class Terminator:
    def __init__(
        self,
        grace: float,
        dry_run: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace = grace
        self.dry_run = dry_run
        self.clock = clock
        self._pending: dict[tuple[int, float], _Pending] = {}
        self._use_pidfd = _pidfd_supported()

    # -- SIGTERM -----------------------------------------------------------------------

    def terminate(self, termination: Termination) -> Outcome:
        facts = termination.process.facts
        if facts.pid <= 1 or facts.pid == os.getpid() or facts.start_time is None:
            return Outcome.REFUSED
        if self.dry_run:
            return Outcome.DRY_RUN
        key = (facts.pid, facts.start_time)
        if key in self._pending:
            return Outcome.SIGNALLED  # already on its way out; SIGKILL follows on time
        opened = self._open(facts.pid, facts.start_time)
        if isinstance(opened, Outcome):
            return opened
        outcome = self._send(opened, signal.SIGTERM)
        if outcome is Outcome.SIGNALLED:
            self._pending[key] = _Pending(termination, opened, self.clock() + self.grace)
        else:
            self._close(opened)
        return outcome

    def _open(self, pid: int, started: float) -> int | psutil.Process | Outcome:
        if self._use_pidfd:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                return Outcome.GONE
            except OSError as error:
                if error.errno not in (errno.ENOSYS, errno.EINVAL):
                    raise
                self._use_pidfd = False
            else:
                # The pidfd names whatever process had the pid when it was opened; if that
                # process still has the start time the snapshot saw, it is the same one.
                current = start_time(pid)
                if current is None:
                    os.close(fd)
                    return Outcome.GONE
                if abs(current - started) > START_TIME_TOLERANCE:
                    os.close(fd)
                    return Outcome.REUSED
                return fd
        try:
            process = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return Outcome.GONE
        if abs(process.create_time() - started) > START_TIME_TOLERANCE:
            return Outcome.REUSED
        return process

    def _send(self, handle: int | psutil.Process, signum: int) -> Outcome:
        try:
            if isinstance(handle, int):
                signal.pidfd_send_signal(handle, signum)
            else:
                handle.send_signal(signum)  # psutil checks the identity before signalling
        except (ProcessLookupError, psutil.NoSuchProcess):
            return Outcome.GONE
        except (PermissionError, psutil.AccessDenied):
            return Outcome.DENIED
        return Outcome.SIGNALLED

    def in_progress(self, termination: Termination) -> bool:
        """Whether this very process was signalled and its grace is not over yet."""
        facts = termination.process.facts
        return (facts.pid, facts.start_time) in self._pending

    # -- SIGKILL after the grace period ------------------------------------------------

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    def escalate_due(self) -> list[tuple[Termination, Outcome]]:
        """SIGKILL every pending process whose grace is over; forget those that exited."""
        now = self.clock()
        killed = []
        for key, pending in list(self._pending.items()):
            if self._exited(pending.handle):
                self._forget(key)
            elif pending.deadline <= now:
                killed.append((pending.termination, self._send(pending.handle, signal.SIGKILL)))
                self._forget(key)
        return killed

    def wait(self, timeout: float) -> None:
        """Block until every pending process exited or ``timeout`` passed (one-shot runs)."""
        deadline = self.clock() + timeout
        while self._pending:
            for key, pending in list(self._pending.items()):
                if self._exited(pending.handle):
                    self._forget(key)
            remaining = deadline - self.clock()
            if not self._pending or remaining <= 0:
                return
            fds = [p.handle for p in self._pending.values() if isinstance(p.handle, int)]
            if fds:
                poller = select.poll()
                for fd in fds:
                    poller.register(fd, select.POLLIN)
                poller.poll(min(remaining, 0.5) * 1000)
            else:
                time.sleep(min(remaining, 0.05))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _exited(self, handle: int | psutil.Process) -> bool:
        if isinstance(handle, int):
            ready = select.select([handle], [], [], 0)[0]
            return bool(ready)
        try:
            return handle.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    def _forget(self, key: tuple[int, float]) -> None:
        pending = self._pending.pop(key)
        self._close(pending.handle)

    @staticmethod
    def _close(handle: int | psutil.Process) -> None:
        if isinstance(handle, int):
            with contextlib.suppress(OSError):
                os.close(handle)

    def close(self) -> None:
        for key in list(self._pending):
            self._forget(key)



class Detacher:
    """Detaches through the store; never waits long for a lock another user may hold."""

    LOCK_TIMEOUT = 5.0

    def __init__(self, store: Store, dry_run: bool = False) -> None:
        self.store = store
        self.dry_run = dry_run

    def detach(self, detachments: list[Detachment]) -> str | None:
        """Detach them all in one transaction; returns an error line or None."""
        if self.dry_run or not detachments:
            return None
        try:
            with self.store.transaction(timeout=self.LOCK_TIMEOUT) as tx:
                for item in detachments:
                    tx.detach(item.eid, item.device_index, uid=item.uid)
        except StoreError as error:
            return str(error)
        except PermissionError as error:
            return f"permission denied writing the state ({error}); run genv enforce with sudo"
        return None
