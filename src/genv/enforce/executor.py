"""Carrying a plan out: signalling the very processes the observation saw, and detaching.

Termination is SIGTERM, then SIGKILL for a process still there after the grace period. A
process is signalled through a pidfd, opened and then checked against the start the
observation saw (ticks since boot), so a pid that was reused by another process is never
hit. The pidfds of the processes in their grace sit in one epoll: the daemon sleeps on it and
learns with one call which of thousands exited. Each termination stands alone: what the system
refuses for one (EPERM, a vanished process, an unexpected OSError) is that one's outcome and
never stops the others.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import time
from collections.abc import Callable
from enum import Enum

from genv.domain.models import Attachment
from genv.domain.values import value
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


@value
class Kill:
    """A SIGKILL at the end of a grace period, or earlier because genv enforce stops."""

    termination: Termination
    outcome: Outcome
    grace: float
    left: float = 0.0  # seconds of the grace that were left: more than 0 when killed early
    error: str = ""

    @property
    def early(self) -> bool:
        return self.left > 0


class _Pending:
    """A termination in its grace period (changed as it goes: its pidfd may be closed)."""

    __slots__ = ("deadline", "handle", "termination")

    def __init__(self, termination: Termination, handle: int | None, deadline: float) -> None:
        self.termination = termination
        self.handle = handle  # a pidfd; None without one (no pidfds, or none to spare)
        self.deadline = deadline


def _pidfd_supported() -> bool:
    return hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")


def describe(error: BaseException) -> str:
    """One line about an unexpected error, for the log."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} (errno {error.errno})"
    return f"{type(error).__name__}: {error}"


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
        # Sent SIGKILL, not seen gone yet (a process dying in the driver may take seconds):
        # still on its way out, so it is neither signalled nor told of again.
        self._killed: dict[tuple[int, int], int | None] = {}
        self._by_fd: dict[int, tuple[int, int]] = {}
        self._epoll: select.epoll | None = None
        self._use_pidfd = _pidfd_supported()

    # -- SIGTERM -----------------------------------------------------------------------

    def terminate(self, termination: Termination) -> Outcome:
        """SIGTERM the very process of ``termination``; SIGKILL follows after the grace.

        Raises OSError only for what the system refuses unexpectedly: the caller reports it as
        FAILED for this one termination and goes on with the others.
        """
        facts = termination.process.facts
        if facts.pid <= 1 or facts.pid == os.getpid() or facts.start is None:
            return Outcome.REFUSED
        if self.dry_run:
            return Outcome.DRY_RUN
        key = (facts.pid, facts.start)
        if key in self._pending or key in self._killed:
            return Outcome.SIGNALLED  # already on its way out; SIGKILL follows on time
        opened = self._open(facts.pid, facts.start)
        if isinstance(opened, Outcome):
            return opened
        try:
            outcome = self._send(opened, facts.pid, facts.start, signal.SIGTERM)
        except BaseException:
            self._close(opened)
            raise
        if outcome is Outcome.SIGNALLED:
            self._add(key, _Pending(termination, opened, self.clock() + self.grace))
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
                if error.errno in (errno.ENOSYS, errno.EINVAL):
                    self._use_pidfd = False  # an old kernel: pid and start from now on
                elif error.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
                # (out of descriptors: this one goes by pid and start)
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
                # No pidfd: check the identity right before signalling (a window of a few
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
        """Whether this very process was signalled and is on its way out: in its grace, or
        sent SIGKILL and not gone yet."""
        facts = termination.process.facts
        if facts.start is None:
            return False
        key = (facts.pid, facts.start)
        return key in self._pending or key in self._killed

    def _dying(self, key: tuple[int, int]) -> bool:
        """Whether ``key``, sent SIGKILL, has not exited yet; let go of once it has. Looked
        at between cycles (escalate_due), so that a cycle which saw it before it died still
        counts it as on its way out."""
        handle = self._killed[key]
        if handle is not None:
            poller = select.poll()
            poller.register(handle, select.POLLIN)
            gone = bool(poller.poll(0))
        else:
            gone = procfs.start_of(key[0]) != key[1]
        if gone:
            del self._killed[key]
            self._close(handle)
        return not gone

    # -- the processes in their grace ----------------------------------------------------

    def _add(self, key: tuple[int, int], pending: _Pending) -> None:
        self._pending[key] = pending
        if pending.handle is None:
            return
        try:
            if self._epoll is None:
                self._epoll = select.epoll()
            self._epoll.register(pending.handle, select.EPOLLIN)
        except OSError:
            # No epoll to spare: it is still watched, through /proc, at each escalation.
            self._close(pending.handle)
            pending.handle = None
            return
        self._by_fd[pending.handle] = key

    def _forget(self, key: tuple[int, int], killed: bool = False) -> None:
        """Done with the grace of ``key``; when it was just ``killed``, its exit is still
        waited for (see _dying), through its pidfd when it has one."""
        pending = self._pending.pop(key)
        if pending.handle is not None:
            self._by_fd.pop(pending.handle, None)
            if self._epoll is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.unregister(pending.handle)
            if not killed:
                self._close(pending.handle)
        if killed:
            self._killed[key] = pending.handle

    def fileno(self) -> int | None:
        """A descriptor that becomes readable when a process in its grace exits (None when
        none is watched that way)."""
        if self._epoll is None or not self._by_fd:
            return None
        return self._epoll.fileno()

    def _exited(self) -> set[tuple[int, int]]:
        """The processes in their grace that exited: one epoll call for those with a pidfd."""
        gone: set[tuple[int, int]] = set()
        if self._epoll is not None and self._by_fd:
            for fd, _ in self._epoll.poll(0, maxevents=len(self._by_fd)):
                key = self._by_fd.get(fd)
                if key is not None:
                    gone.add(key)
        for key, pending in self._pending.items():
            if pending.handle is None and procfs.start_of(key[0]) != key[1]:
                gone.add(key)
        return gone

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def unwatched(self) -> bool:
        """Whether some process in its grace has no pidfd: its exit is noticed only by
        looking again (the caller wakes up now and then for it)."""
        return len(self._by_fd) < len(self._pending)

    # -- SIGKILL after the grace period ------------------------------------------------

    def escalate_due(self, now_all: bool = False) -> list[Kill]:
        """SIGKILL every process whose grace is over (every one with ``now_all``: the daemon
        is stopping); forget those that exited. A failure is that one's outcome."""
        now = self.clock()
        for key in list(self._killed):  # killed before: let go of those that are gone
            self._dying(key)
        gone = self._exited()
        kills = []
        for key, pending in list(self._pending.items()):
            if key in gone:
                self._forget(key)
                continue
            if not now_all and pending.deadline > now:
                continue
            error = ""
            try:
                outcome = self._send(pending.handle, key[0], key[1], signal.SIGKILL)
            except Exception as failure:  # one failure never stops the others
                outcome, error = Outcome.FAILED, describe(failure)
            kills.append(
                Kill(
                    pending.termination,
                    outcome,
                    self.grace,
                    max(0.0, pending.deadline - now),
                    error,
                )
            )
            self._forget(key, killed=outcome is Outcome.SIGNALLED)
        return kills

    def wait(self, timeout: float) -> None:
        """Block until every process in its grace exited or ``timeout`` passed."""
        deadline = self.clock() + timeout
        while self._pending:
            for key in self._exited():
                self._forget(key)
            remaining = deadline - self.clock()
            if not self._pending or remaining <= 0:
                return
            fd = self.fileno()
            if fd is not None and len(self._by_fd) == len(self._pending):
                poller = select.poll()  # poll, not select: descriptors may be above 1024
                poller.register(fd, select.POLLIN)
                poller.poll(min(remaining, 0.5) * 1000)
            else:
                time.sleep(min(remaining, 0.05))

    @staticmethod
    def _close(handle: int | None) -> None:
        if handle is not None:
            with contextlib.suppress(OSError):
                os.close(handle)

    def close(self) -> None:
        for key in list(self._pending):
            self._forget(key)
        for handle in self._killed.values():
            self._close(handle)
        self._killed.clear()
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None


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
        observed, to find the ones named. Nothing is changed when it fails (a full disk)."""
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
        except OSError as error:  # the store says what it can; anything else is one line too
            return describe(error)
        return None
