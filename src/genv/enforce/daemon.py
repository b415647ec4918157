"""The enforcement loop: observe, survey, combine, execute; every ``interval`` seconds.

It keeps going through NVML errors, vanished devices, bad state files, a state folder removed
or replaced and a full disk (each logged once per change). It acts only on a whole view:
while the GPUs cannot be read, or only partly, or the state folder cannot be read, nothing is
terminated or detached. It escalates SIGTERM to SIGKILL on time without stalling its cycles,
sleeps in poll (never select: it may hold thousands of descriptors) and stops within moments
on SIGTERM and SIGINT, killing first the processes still in their grace (see signals.py).
Everything it does is told to its reporters (report.py), one event at a time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

from genv.backends.errors import BackendError
from genv.domain.models import Attachment, GpuSnapshot
from genv.domain.observation import Membership, Observation, ObservedProcess
from genv.enforce.executor import Detacher, Outcome, Terminator, describe
from genv.enforce.findings import Finding
from genv.enforce.observe import Observer
from genv.enforce.plan import Plan
from genv.enforce.report import CycleReport, ProblemLog, Reporters
from genv.enforce.rules import RuleConfig
from genv.enforce.signals import Interrupted, Stopper
from genv.enforce.survey_cache import SurveyCache
from genv.store import State, StateError, StoreError
from genv.system import logs

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from genv.enforce.report import Sink

log = logs.logger("genv.enforce")

_DetachKey = tuple[int, str, int]
_LOOK_AGAIN = 0.05  # seconds, for processes in their grace without a pidfd
_UNAVAILABLE = "cannot take a snapshot of the GPUs"


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
        reporter: Sink,
        stopper: Stopper | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.observer = observer
        self.config = config
        self.terminator = terminator
        self.detacher = detacher
        self.reporter = reporter if isinstance(reporter, Reporters) else Reporters(reporter)
        self.stopper = stopper or Stopper()
        self.clock = clock
        self.dry_run = terminator.dry_run
        self.problems = ProblemLog()
        self._memo: _Memo | None = None
        self._survey: SurveyCache | None = None
        self._missing: tuple[object, dict[str, str]] | None = None
        self._retrying: set[_DetachKey] = set()  # detachments that failed: tried again, quietly

    def add_reporter(self, sink: Sink) -> None:
        """Tell ``sink`` too of everything the daemon does (a metrics exporter, say)."""
        self.reporter.add(sink)

    # -- one cycle ---------------------------------------------------------------------

    def cycle(self) -> Plan | None:
        """One enforcement cycle; None when it observed too little to act this time."""
        started = self.clock()
        problems: dict[str, str] = {}
        try:
            plan, skipped, reused = self._cycle(problems)
        except Interrupted:
            return None  # stopping: what was being read does not matter any more
        except BaseException:
            self.reporter.cycle(CycleReport(started, self.clock() - started, False, "failed"))
            raise
        if skipped in ("gpus", "state"):
            # What this cycle did not get to look at stays as it was, not "resolved".
            problems = {**self.problems.active, **problems}
        elif skipped == "partial" and "detach" in self.problems.active:
            problems.setdefault("detach", self.problems.active["detach"])
        self.problems.update(problems)
        self.reporter.cycle(
            CycleReport(
                started,
                self.clock() - started,
                acted=plan is not None and skipped is None,
                skipped=skipped,
                findings=len(plan.findings) if plan else 0,
                terminations=len(plan.terminations) if plan else 0,
                detachments=len(plan.detachments) if plan else 0,
                reused=reused,
                plan=plan,
            )
        )
        return plan if skipped is None else None

    def _cycle(self, problems: dict[str, str]) -> tuple[Plan | None, str | None, bool]:
        try:
            with self.stopper.interruptible():
                snapshot, gpus, state = self.observer.observe()
        except BackendError as error:
            message = (
                f"{_UNAVAILABLE}: {error}; nothing is terminated or detached until they can be read"
            )
            previous = self.problems.active.get("gpus", "")
            if previous.startswith(_UNAVAILABLE) and previous != message:
                # The same outage, told in other words (NVML counts down to its next try):
                # said once when it began, once when it ends.
                log.debug("%s", message)
                message = previous
            problems["gpus"] = message
            return None, "gpus", False
        except StateError as error:
            problems["state"] = (
                f"cannot read the state: {error}; nothing is terminated or detached until "
                "it can be read"
            )
            return None, "state", False
        except StoreError as error:
            problems["state"] = f"cannot read the state: {error}"
            return None, "state", False
        if not self.dry_run:
            try:
                self.observer.store.publish_holdings(state)
            except StoreError as error:
                problems["holdings"] = f"cannot say which devices users hold: {error}"
        survey = self._survey
        if survey is None or survey.config is not self.config:
            survey = self._survey = SurveyCache(self.config)
        survey.update(snapshot, getattr(self.observer, "change", None))
        memo = self._memo_for(snapshot, gpus, state)
        reused = memo.plan is not None
        if memo.problems is None:
            memo.problems = self._problems_of(snapshot, state, gpus.errors, survey)
        problems.update(memo.problems)
        if gpus.partial:
            problems["gpus"] = (
                "the GPUs could be read only in part; nothing is terminated or detached "
                "until they can be read whole"
            )
            return None, "partial", reused
        if memo.plan is None:
            memo.plan = survey.plan()
        self.execute(memo.plan, snapshot.attachments, problems)
        return memo.plan, None, reused

    def _memo_for(self, snapshot: Observation, gpus: GpuSnapshot, state: State) -> _Memo:
        """Where this cycle's problems and plan are kept. Both are pure functions of what was
        observed and of the configuration, so they are reused while the observer hands back
        the very same objects (nothing changed; see Observer.observe) under the same
        configuration: a cycle on an unchanged machine runs no rule again."""
        key = (snapshot, gpus, state, self.config)
        if self._memo is None or not all(a is b for a, b in zip(key, self._memo.key, strict=True)):
            self._memo = _Memo(key)
        return self._memo

    def _problems_of(
        self, snapshot: Observation, state: State, gpu_errors: tuple[str, ...], survey: SurveyCache
    ) -> dict[str, str]:
        return _problems_of(
            snapshot, state, gpu_errors, survey.unknown(), self._missing_devices(snapshot)
        )

    def _missing_devices(self, snapshot: Observation) -> dict[str, str]:
        """Attachments to devices that are not present, worked out again only when the
        attachments or the devices present change."""
        present = frozenset(device.index for device in snapshot.devices)
        key = (snapshot.attachments, present)
        cached = self._missing
        if cached is not None and cached[0] == key:
            return cached[1]
        missing = _missing_devices(snapshot, present)
        self._missing = (key, missing)
        return missing

    def execute(
        self,
        plan: Plan,
        attachments: tuple[Attachment, ...] = (),
        problems: dict[str, str] | None = None,
    ) -> None:
        for finding in plan.findings:
            if not self._told(finding):
                self.reporter.finding(finding)
        stopper = self.stopper
        for termination in plan.terminations:
            if stopper.stopping:
                break  # stopping: the processes in their grace are killed on the way out
            if self.terminator.in_progress(termination):
                continue
            self.reporter.terminating(termination)
            error = ""
            try:
                outcome = self.terminator.terminate(termination)
            except Exception as failure:  # one termination's failure never stops the others
                outcome, error = Outcome.FAILED, describe(failure)
            self.reporter.outcome(termination, outcome, error)
        if plan.detachments and not stopper.stopping:
            self._detach(plan, attachments, problems)

    def _told(self, finding: Finding) -> bool:
        """Whether the line of ``finding`` was said already and nothing new is done about it:
        every process it terminates is on its way out (SIGKILL follows on time), and every
        detachment is one that failed before and is being tried again. So each line tells of
        one action, however many cycles see the violation."""
        if not finding.terminations and not finding.detachments:
            return False
        in_progress = self.terminator.in_progress
        return all(in_progress(t) for t in finding.terminations) and all(
            (d.uid, d.eid, d.device_index) in self._retrying for d in finding.detachments
        )

    def _detach(
        self, plan: Plan, attachments: tuple[Attachment, ...], problems: dict[str, str] | None
    ) -> None:
        try:
            error = self.detacher.detach(list(plan.detachments), list(attachments))
        except Exception as failure:  # a bug in one action must not skip the rest of the loop
            error = describe(failure)
        if error:
            # Nothing was detached (the store changes all or nothing): said once, tried again
            # every cycle while the violation lasts; "Detaching" is printed only once done.
            self._retrying = {(d.uid, d.eid, d.device_index) for d in plan.detachments}
            if problems is not None:
                problems["detach"] = f"could not detach, trying again each cycle: {error}"
            else:
                log.error("could not detach, trying again next cycle: %s", error)
            self.reporter.detach_failed(plan.detachments, error)
            return
        self._retrying = set()
        for detachment in plan.detachments:
            self.reporter.detaching(detachment)

    def escalate(self, now_all: bool = False) -> None:
        for kill in self.terminator.escalate_due(now_all):
            self.reporter.killing(kill)

    # -- running -----------------------------------------------------------------------

    def run_once(self) -> bool:
        """``--interval 0``: one cycle, then wait up to the grace period and escalate.

        False when nothing could be acted on, so that a one-shot run can fail visibly.
        """
        try:
            plan = self.cycle()
            deadline = self.terminator.next_deadline()
            while self.terminator.pending and not self.stopper.stopping:
                self.escalate()
                deadline = self.terminator.next_deadline()
                if deadline is None:
                    break
                self.stopper.wait(self._until(deadline), self.terminator.fileno())
            return plan is not None
        finally:
            self._finish()

    def run_forever(self, interval: float) -> None:
        clock = self.clock
        stopper = self.stopper
        next_cycle = clock()
        hangups = 0
        try:
            while not stopper.stopping:
                now = clock()
                if now >= next_cycle:
                    try:
                        self.cycle()
                    except Exception:  # a bug must not end enforcement on the whole machine
                        log.exception("enforcement cycle failed; trying again next cycle")
                    next_cycle = now + interval
                if stopper.stopping:
                    break
                self.escalate()
                if stopper.hangups != hangups:
                    hangups = stopper.hangups
                    log.info("SIGHUP received and ignored; SIGTERM or SIGINT stops genv enforce")
                wake = next_cycle
                deadline = self.terminator.next_deadline()
                if deadline is not None:
                    wake = min(wake, deadline)
                stopper.wait(self._until(wake), self.terminator.fileno())
        finally:
            self._finish()

    def _until(self, wake: float) -> float:
        """Seconds to sleep until ``wake``; briefly when an exit can only be seen by looking."""
        seconds = max(0.0, wake - self.clock())
        return min(seconds, _LOOK_AGAIN) if self.terminator.unwatched else seconds

    def _finish(self) -> None:
        """On the way out: the processes still in their grace get their SIGKILL now (a
        daemon that is gone could not send it later)."""
        if self.terminator.pending:
            count = self.terminator.pending
            if self.stopper.stopping:
                log.warning(
                    "stopping: killing %d process(es) still in their grace period now", count
                )
            self.escalate(now_all=True)
        self.terminator.close()

    def stop(self, *_: object) -> None:
        self.stopper.request_stop()

    def install_signal_handlers(self) -> None:
        self.stopper.install()

    def close(self) -> None:
        self.stopper.close()
        watcher = getattr(self.observer, "watcher", None)
        if watcher is not None:
            watcher.close()
        events = getattr(self.observer, "events", None)
        if events is not None:
            events.close()


def _problems_of(
    snapshot: Observation,
    state: State,
    gpu_errors: tuple[str, ...],
    unknown: Iterable[ObservedProcess] | None = None,
    missing: dict[str, str] | None = None,
) -> dict[str, str]:
    """Lasting problems a cycle saw; ``unknown`` (the processes whose environment could not
    be told) and ``missing`` (see _missing_devices) when the caller worked them out."""
    problems = {f"state:{p.path}": p.line() for p in state.problems}
    for error in gpu_errors:
        problems[f"gpu:{error}"] = f"GPU: {error}"
    if missing is None:
        missing = _missing_devices(snapshot, frozenset(d.index for d in snapshot.devices))
    problems.update(missing)
    if unknown is None:
        unknown = (p for p in snapshot.processes if p.membership is Membership.UNKNOWN)
    hint = "" if os.geteuid() == 0 else "; run genv enforce with sudo (permission)"
    for process in unknown:
        who = process.facts.username or "another user"
        problems[f"unknown:{process.pid}:{process.facts.start}"] = (
            f"process {process.pid} of {who} is left alone: {process.note}{hint}"
        )
    return problems


def _missing_devices(snapshot: Observation, present: frozenset[int]) -> dict[str, str]:
    """One line per user whose environments are attached to devices not present now (a
    file can name thousands of devices: not thousands of lines)."""
    by_uid: dict[int, list[Attachment]] = {}
    for a in snapshot.attachments:
        if a.device_index not in present:
            by_uid.setdefault(a.uid, []).append(a)
    problems = {}
    for uid, found in by_uid.items():
        eids = sorted({a.eid for a in found})
        devices = sorted({a.device_index for a in found})
        if len(eids) == 1 and len(devices) == 1:
            line = f"environment {eids[0]} is attached to device {devices[0]}"
        else:
            line = (
                f"environments {_some(eids)} of uid {uid} are attached to devices "
                f"{_some([str(d) for d in devices])}"
            )
        problems[f"device:{uid}"] = (
            f"{line}, which {'is' if len(devices) == 1 else 'are'} not present now"
        )
    return problems


def _some(names: list[str], shown: int = 5) -> str:
    more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
