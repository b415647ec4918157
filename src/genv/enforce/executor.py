"""Carrying a plan out: signalling the very processes the observation saw, and detaching.

Termination is SIGTERM, then SIGKILL for a process still there after the grace period. A
process is signalled through a pidfd, opened and then checked against the start the
observation saw (ticks since boot), so a pid that was reused by another process is never
hit. Each termination stands alone: an error in one never stops the others.
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

from genv.domain.models import Attachment
from genv.enforce.findings import Detachment, Termination
from genv.store import Store, StoreError
from genv.system import procfs


class Outcome(Enum):
    SIGNALLED = "signalled"
    GONE = "gone"  # exited before we got to it: not an error
    REUSED = "reused"  # the pid now names another process: left alone
    DENIED = "permission-denied"
    REFUSED = "refused"  # never signalled: init, genv enforce itself, unknown start
    FAILED = "failed"  # the system refused for another reason (logged)
    DRY_RUN = "dry-run"


@dataclass
class _Pending:
    termination: Termination
    handle: int | None  # a pidfd; None where the kernel has no pidfds (then pid and start)
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
        self._pending: dict[tuple[int, int], _Pending] = {}
        self._use_pidfd = _pidfd_supported()

    # -- SIGTERM -----------------------------------------------------------------------

    def terminate(self, termination: Termination) -> Outcome:
        facts = termination.process.facts
        if facts.pid <= 1 or facts.pid == os.getpid() or facts.start is None:
            return Outcome.REFUSED
        if self.dry_run:
            return Outcome.DRY_RUN
        key = (facts.pid, facts.start)
        if key in self._pending:
            return Outcome.SIGNALLED  # already on its way out; SIGKILL follows on time
        try:
            opened = self._open(facts.pid, facts.start)
            if isinstance(opened, Outcome):
                return opened
            outcome = self._send(opened, facts.pid, facts.start, signal.SIGTERM)
        except OSError:
            return Outcome.FAILED
        if outcome is Outcome.SIGNALLED:
            self._pending[key] = _Pending(termination, opened, self.clock() + self.grace)
        else:
            self._close(opened)
        return outcome

    def _open(self, pid: int, start: int) -> int | None | Outcome:
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
                # process still has the start the observation saw, it is the same one.
                current = procfs.start_of(pid)
                if current is None:
                    os.close(fd)
                    return Outcome.GONE
                if current != start:
                    os.close(fd)
                    return Outcome.REUSED
                return fd
        current = procfs.start_of(pid)
        if current is None:
            return Outcome.GONE
        return Outcome.REUSED if current != start else None

    def _send(self, handle: int | None, pid: int, start: int, signum: int) -> Outcome:
        try:
            if handle is not None:
                signal.pidfd_send_signal(handle, signum)
            else:
                # No pidfds: check the identity right before signalling (a window of a few
                # microseconds remains, documented in docs/security.md).
                if procfs.start_of(pid) != start:
                    return Outcome.GONE
                os.kill(pid, signum)
        except ProcessLookupError:
            return Outcome.GONE
        except PermissionError:
            return Outcome.DENIED
        return Outcome.SIGNALLED

    def in_progress(self, termination: Termination) -> bool:
        """Whether this very process was signalled and its grace is not over yet."""
        facts = termination.process.facts
        return facts.start is not None and (facts.pid, facts.start) in self._pending

    # -- SIGKILL after the grace period ------------------------------------------------

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    def pidfds(self) -> list[int]:
        """The descriptors that become readable when a pending process exits."""
        return [p.handle for p in self._pending.values() if p.handle is not None]

    def escalate_due(self, now_all: bool = False) -> list[tuple[Termination, Outcome]]:
        """SIGKILL every pending process whose grace is over (all of them with ``now_all``);
        forget those that exited."""
        now = self.clock()
        killed = []
        for key, pending in list(self._pending.items()):
            if self._exited(key, pending):
                self._forget(key)
            elif now_all or pending.deadline <= now:
                try:
                    outcome = self._send(pending.handle, key[0], key[1], signal.SIGKILL)
                except OSError:
                    outcome = Outcome.FAILED
                killed.append((pending.termination, outcome))
                self._forget(key)
        return killed

    def wait(self, timeout: float) -> None:
        """Block until every pending process exited or ``timeout`` passed (one-shot runs)."""
        deadline = self.clock() + timeout
        while self._pending:
            for key, pending in list(self._pending.items()):
                if self._exited(key, pending):
                    self._forget(key)
            remaining = deadline - self.clock()
            if not self._pending or remaining <= 0:
                return
            fds = self.pidfds()
            if fds:
                poller = select.poll()  # poll, not select: descriptors may be above 1024
                for fd in fds:
                    poller.register(fd, select.POLLIN)
                poller.poll(min(remaining, 0.5) * 1000)
            else:
                time.sleep(min(remaining, 0.05))

    @property
    def pending(self) -> int:
        return len(self._pending)

    @staticmethod
    def _exited(key: tuple[int, int], pending: _Pending) -> bool:
        if pending.handle is None:
            return procfs.start_of(key[0]) != key[1]
        poller = select.poll()
        poller.register(pending.handle, select.POLLIN)
        return bool(poller.poll(0))

    def _forget(self, key: tuple[int, int]) -> None:
        pending = self._pending.pop(key)
        self._close(pending.handle)

    @staticmethod
    def _close(handle: int | None) -> None:
        if handle is not None:
            with contextlib.suppress(OSError):
                os.close(handle)

    def close(self) -> None:
        for key in list(self._pending):
            self._forget(key)


class Detacher:
    """Detaches through the store, never waiting on a lock another user may hold.

    As root it revokes, in its own file, the attachments of other users (no user can lock
    root's file); without root it can only detach its own user's environments.
    """

    def __init__(self, store: Store, dry_run: bool = False) -> None:
        self.store = store
        self.dry_run = dry_run

    def detach(self, detachments: list[Detachment], attachments: list[Attachment]) -> str | None:
        """Detach them all; returns an error line or None. ``attachments``: the attachments
        observed, to find the ones named."""
        if self.dry_run or not detachments:
            return None
        wanted = {(d.uid, d.eid, d.device_index) for d in detachments}
        taken = [a for a in attachments if (a.uid, a.eid, a.device_index) in wanted]
        try:
            if self.store.caller_uid == 0:
                with self.store.transaction(timeout=1.0) as tx:
                    tx.revoke(attachments=taken)
                return None
            mine = [a for a in taken if a.uid == self.store.caller_uid]
            if mine:
                with self.store.transaction(timeout=1.0) as tx:
                    for a in mine:
                        tx.detach(a.eid, a.device_index)
            if len(mine) < len(taken):
                return "permission denied detaching other users' environments; run it with sudo"
        except StoreError as error:
            return str(error)
        return None
