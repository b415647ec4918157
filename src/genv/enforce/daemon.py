"""The enforcement loop: observe, survey, combine, execute; every ``interval`` seconds.

It keeps going through NVML errors, vanished devices and bad state files (each logged once per
change), escalates SIGTERM to SIGKILL on time without stalling its cycles, and stops cleanly on
SIGTERM and SIGINT.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from genv.backends.base import BackendError
from genv.domain.models import Attachment, GpuSnapshot
from genv.domain.observation import Membership, Observation
from genv.enforce.events import FAILED, NOT_OBSERVED, CycleEvent
from genv.enforce.executor import Detacher, Outcome, Terminator
from genv.enforce.observe import Observer
from genv.enforce.plan import Plan, combine
from genv.enforce.report import ProblemLog, Reporter
from genv.enforce.rules import RuleConfig, survey
from genv.store import State, StoreError

log = logging.getLogger("genv.enforce")


class _Memo:
    """What one observation led to: its problems and its plan, once worked out."""

    __slots__ = ("key", "problems", "plan")

    def __init__(self, key: tuple[object, ...]) -> None:
        self.key = key
        self.problems: dict[str, str] | None = None
        self.plan: Plan | None = None


class Enforcer:
    def __init__(
        self,
        observer: Observer,
        config: RuleConfig,
        terminator: Terminator,
        detacher: Detacher,
        reporter: Reporter,
    ) -> None:
        self.observer = observer
        self.config = config
        self.terminator = terminator
        self.detacher = detacher
        self.reporter = reporter
        self.dry_run = terminator.dry_run
        self.problems = ProblemLog()
        self._stop = threading.Event()
        self._memo: _Memo | None = None

    # -- one cycle ---------------------------------------------------------------------

    def cycle(self) -> Plan | None:
        """One enforcement cycle; None when nothing could be observed this time."""
        problems: dict[str, str] = {}
        try:
            snapshot, gpus, state = self.observer.observe()
        except (BackendError, StoreError) as error:
            problems["observe"] = f"cannot take a snapshot this cycle: {error}"
            self.problems.update(problems)
            return None
        if not self.dry_run:
            try:
                self.observer.store.publish_holdings(state)
            except StoreError as error:
                problems["holdings"] = f"cannot say which devices users hold: {error}"
        memo = self._memo_for(snapshot, gpus, state)
        if memo.problems is None:
            memo.problems = _problems_of(snapshot, state, gpus.errors)
        problems.update(memo.problems)
        self.problems.update(problems)
        if memo.plan is None:
            memo.plan = combine(survey(snapshot, self.config))
        self.execute(memo.plan, snapshot.attachments)
        return memo.plan

    def reported_cycle(self) -> Plan | None:
        """``cycle``, then the reporter is told how it went (CycleEvent), whatever happened."""
        started, begun = time.time(), time.perf_counter()
        plan: Plan | None = None
        error: str | None = FAILED
        try:
            plan = self.cycle()
            error = None if plan is not None else NOT_OBSERVED
            return plan
        finally:
            self.reporter.cycle(CycleEvent(started, time.perf_counter() - begun, plan, error))

    def _memo_for(self, snapshot: Observation, gpus: GpuSnapshot, state: State) -> _Memo:
        """Where this cycle's problems and plan are kept. Both are pure functions of what was
        observed and of the configuration, so they are reused while the observer hands back
        the very same objects (nothing changed; see Observer.observe) under the same
        configuration: a cycle on an unchanged machine runs no rule again."""
        key = (snapshot, gpus, state, self.config)
        if self._memo is None or not all(a is b for a, b in zip(key, self._memo.key, strict=True)):
            self._memo = _Memo(key)
        return self._memo

    def execute(self, plan: Plan, attachments: tuple[Attachment, ...] = ()) -> None:
        # A process signalled in an earlier cycle is still on its way out (SIGKILL follows on
        # time): say nothing about it again, so that each line tells of one action.
        signalled = self.terminator.in_progress
        for finding in plan.findings:
            if (
                finding.terminations
                and not finding.detachments
                and all(signalled(termination) for termination in finding.terminations)
            ):
                continue
            self.reporter.finding(finding)
        for termination in plan.terminations:
            if signalled(termination):
                continue
            self.reporter.terminating(termination)
            outcome = self.terminator.terminate(termination)
            self.reporter.outcome(termination, outcome)
        if plan.detachments:
            error = self.detacher.detach(list(plan.detachments), list(attachments))
            if error:
                log.error("could not detach, will try again next cycle: %s", error)
            else:  # said only once it is done
                for detachment in plan.detachments:
                    self.reporter.detaching(detachment)

    def escalate(self) -> None:
        for termination, outcome in self.terminator.escalate_due():
            if outcome is Outcome.SIGNALLED:
                self.reporter.killing(termination, self.terminator.grace)
            else:
                self.reporter.outcome(termination, outcome)

    # -- running -----------------------------------------------------------------------

    def run_once(self) -> bool:
        """``--interval 0``: one cycle, then wait up to the grace period and escalate.

        False when nothing could be observed, so that a one-shot run can fail visibly.
        """
        plan = self.reported_cycle()
        if self.terminator.pending:
            self.terminator.wait(self.terminator.grace)
            self.escalate()
        self.terminator.close()
        return plan is not None

    def run_forever(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        next_cycle = clock()
        while not self._stop.is_set():
            now = clock()
            if now >= next_cycle:
                try:
                    self.reported_cycle()
                except Exception:  # a bug must not end enforcement on the whole machine
                    log.exception("enforcement cycle failed; trying again next cycle")
                next_cycle = now + interval
            self.escalate()
            wake = next_cycle
            deadline = self.terminator.next_deadline()
            if deadline is not None:
                wake = min(wake, deadline)
            self._stop.wait(max(0.0, wake - clock()))
        self.terminator.close()

    def stop(self, *_: object) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)


def _problems_of(
    snapshot: Observation, state: State, gpu_errors: tuple[str, ...]
) -> dict[str, str]:
    problems = {f"state:{p.path}": p.line() for p in state.problems}
    for error in gpu_errors:
        problems[f"gpu:{error}"] = f"GPU: {error}"
    present = {device.index for device in snapshot.devices}
    for attachment in snapshot.attachments:
        if attachment.device_index not in present:
            problems[f"device:{attachment.device_index}:{attachment.eid}"] = (
                f"environment {attachment.eid} is attached to device "
                f"{attachment.device_index}, which is not present now"
            )
    for process in snapshot.processes:
        if process.membership is Membership.UNKNOWN:
            who = process.facts.username or "another user"
            hint = "" if os.geteuid() == 0 else "; run genv enforce with sudo (permission)"
            problems[f"unknown:{process.pid}:{process.facts.start}"] = (
                f"process {process.pid} of {who} is left alone: {process.note}{hint}"
            )
    return problems
