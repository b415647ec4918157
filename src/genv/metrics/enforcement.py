"""The daemon's own metrics (``genv enforce --metrics-port``): a sink of its events.

It sits beside the Reporter (genv.enforce.report.Reporters) and receives the same calls:
``finding``, ``terminating``, ``outcome``, ``killing``, ``detaching`` and, once per cycle,
``cycle``. Each costs a few counter updates in the daemon's thread (a cycle whose plan did
not change recounts nothing); the page is rendered in the HTTP server's thread from the
counters alone, so a scrape never waits for a cycle and a cycle never waits for a scrape.
What changes every cycle (the cycle's count, duration and time, the daemon's own CPU and
memory) is kept in a registry of its own: the rest, which changes only when the daemon acts
or finds something, is rendered again only then, so a scrape of a quiet daemon costs the
few series that moved.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Sequence

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from genv import __version__
from genv.enforce.executor import Kill, Outcome
from genv.enforce.findings import Detachment, Finding, Termination
from genv.enforce.plan import Plan
from genv.enforce.report import CycleReport
from genv.enforce.rules import (
    ENV_DEVICES,
    ENV_MEMORY,
    MAX_DEVICES_PER_USER,
    MAX_MEMORY_PER_USER,
    NON_ENV_PROCESSES,
)
from genv.metrics.server import MetricsServer
from genv.metrics.usage import user_label

RULES = (NON_ENV_PROCESSES, ENV_DEVICES, ENV_MEMORY, MAX_DEVICES_PER_USER, MAX_MEMORY_PER_USER)
TERMINATE, KILL, DETACH = "terminate", "kill", "detach"
SIGTERM, SIGKILL = "SIGTERM", "SIGKILL"
# From a tenth of a millisecond (an unchanged machine) to seconds (nvidia-smi on a busy host):
# finely where cycles usually fall, coarsely above (every bucket is a series on each scrape).
CYCLE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0, 10.0)

# Counters without the extra ``_created`` series (one per label set) where the client can.
if hasattr(prometheus_client, "disable_created_metrics"):
    prometheus_client.disable_created_metrics()


def _user(termination: Termination) -> str:
    facts = termination.process.facts
    return user_label(facts.uid, facts.username)


_BUCKET_LABELS = tuple(floatToGoString(bound) for bound in (*CYCLE_BUCKETS, float("inf")))


class _PerCycle:
    """What changes every cycle, counted in plain numbers by the daemon's thread (a cycle
    costs an addition and a bisection) and made into families only when scraped: the cycles,
    their durations (the histogram), when the last complete one began, and the daemon's CPU
    time and resident memory (prometheus-client's process metrics, by the same names), read
    cheaply: no count of open descriptors, which the daemon holds one per GPU process."""

    def __init__(self) -> None:
        self.in_bucket = [0] * (len(CYCLE_BUCKETS) + 1)  # the last one: above every bound
        self.seconds = 0.0
        self.last_cycle = 0.0
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        try:  # read again on each scrape (procfs makes it anew at offset 0)
            self._statm: int | None = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._statm = None

    def observe(self, duration: float) -> None:
        self.in_bucket[bisect_left(CYCLE_BUCKETS, duration)] += 1
        self.seconds += duration

    def numbers(self) -> list[float]:
        """Every sample's value, in the order of ``collect``'s samples: the buckets (each
        counting those below it), the count and sum, the cycles, when the last began, the
        CPU time and, when it can be read, the resident memory."""
        cumulative, total = [], 0
        for count in list(self.in_bucket):  # one copy: the buckets and the count agree
            total += count
            cumulative.append(total)
        times = os.times()
        found = [
            *cumulative,
            total,
            self.seconds,
            total,
            self.last_cycle,
            times.user + times.system,
        ]
        resident = self._resident()
        if resident is not None:
            found.append(resident)
        return found

    def _resident(self) -> int | None:
        if self._statm is None:
            return None
        try:
            return int(os.pread(self._statm, 256, 0).split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return None

    def collect(self) -> list[Metric]:
        numbers = self.numbers()
        buckets = list(zip(_BUCKET_LABELS, numbers, strict=False))
        count = len(_BUCKET_LABELS)
        found: list[Metric] = [
            HistogramMetricFamily(
                "genv_enforce_cycle_duration_seconds",
                "Wall time of an enforcement cycle (observe, rules, actions)",
                buckets=buckets,
                sum_value=numbers[count + 1],
            ),
            CounterMetricFamily(
                "genv_enforce_cycles", "Enforcement cycles run", value=numbers[count + 2]
            ),
            GaugeMetricFamily(
                "genv_enforce_last_cycle_timestamp_seconds",
                "Time the last complete cycle began (Unix seconds)",
                value=numbers[count + 3],
            ),
            CounterMetricFamily(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                value=numbers[count + 4],
            ),
        ]
        if len(numbers) > count + 5:
            found.append(
                GaugeMetricFamily(
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes",
                    value=numbers[count + 5],
                )
            )
        return found


class PerCycleText:
    """The text of the per-cycle families, as ``generate_latest`` writes it, made on each
    scrape from ``_PerCycle.numbers`` alone: what ``generate_latest`` writes around the
    numbers (names, labels, help, types) is taken from its own rendering once, and each
    number is written by prometheus-client's ``floatToGoString``. Building the families and
    rendering them cost 0.31 ms of the daemon's CPU a scrape, cold; this 0.14 ms, half of it
    reading the numbers (``times``, ``statm``)."""

    def __init__(self, source: _PerCycle, registry: CollectorRegistry) -> None:
        self._source = source
        self._registry = registry
        self._templates: dict[int, list[tuple[str, str]]] = {}  # samples -> the lines

    def render(self) -> bytes:
        numbers = self._source.numbers()
        template = self._templates.get(len(numbers))
        if template is None:
            text = generate_latest(self._registry)
            template = _template(text)
            if sum(1 for _, prefix in template if prefix) != len(numbers):
                return text  # (the memory could be read for one and not the other)
            self._templates[len(numbers)] = template
        values = iter(numbers)
        text_of = floatToGoString
        return "".join(
            f"{prefix} {text_of(next(values))}\n" if prefix else comment
            for comment, prefix in template
        ).encode()


def _template(text: bytes) -> list[tuple[str, str]]:
    """Each line of ``text``: a comment as it is (and no sample), or a sample's name and
    labels (the value, after the last space, left out)."""
    lines: list[tuple[str, str]] = []
    for line in text.decode().splitlines():
        if line.startswith("#"):
            lines.append((line + "\n", ""))
        else:
            lines.append(("", line.rsplit(" ", 1)[0]))
    return lines


# Why a cycle did not complete (the reason label of genv_enforce_cycle_errors): the GPUs or
# the state could not be read (observe), or the cycle raised (internal: a bug, logged).
NOT_OBSERVED = "observe"
FAILED = "internal"
CYCLE_ERRORS = (NOT_OBSERVED, FAILED)


def _error_reason(report: CycleReport) -> str:
    return FAILED if report.skipped == "failed" else NOT_OBSERVED


class EnforcementMetrics:
    """The daemon's counters and gauges, in a registry of their own."""

    def __init__(self, dry_run: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)  # what changes when it acts
        self._per_cycle = _PerCycle()
        self.per_cycle = CollectorRegistry(auto_describe=False)  # what changes every cycle
        self.per_cycle.register(self._per_cycle)
        self._per_cycle_text = PerCycleText(self._per_cycle, self.per_cycle)
        registry = self.registry
        self.terminations = Counter(
            "genv_enforce_terminations",
            "Processes sent SIGTERM, by the rule that found them and their user",
            ["rule", "user"],
            registry=registry,
        )
        self.kills = Counter(
            "genv_enforce_kills",
            "Processes sent SIGKILL after the grace period, by rule and user",
            ["rule", "user"],
            registry=registry,
        )
        self.detachments = Counter(
            "genv_enforce_detachments",
            "Environments detached from a device, by rule and user",
            ["rule", "user"],
            registry=registry,
        )
        self.outcomes = Counter(
            "genv_enforce_signal_outcomes",
            "What came of each signal the daemon meant to send, by rule and signal: "
            "signalled, gone (exited first), reused (its pid names another process now), "
            "permission-denied, refused, failed, dry-run",
            ["rule", "signal", "outcome"],
            registry=registry,
        )
        self.violations = Gauge(
            "genv_enforce_violations",
            "Violations found by the last complete cycle, by rule",
            ["rule"],
            registry=registry,
        )
        self.cycle_errors = Counter(
            "genv_enforce_cycle_errors",
            "Cycles that did not complete: observe (the GPUs or the state could not be "
            "read) or internal (a bug; logged)",
            ["reason"],
            registry=registry,
        )
        self.hosts_not_answering = Gauge(
            "genv_enforce_hosts_not_answering",
            "Hosts that gave no snapshot in the last cycle (0 on one host)",
            registry=registry,
        )
        self.last_action = Gauge(
            "genv_enforce_last_action_timestamp_seconds",
            "Time of the latest action of each kind (terminate, kill, detach), by rule "
            "and user (Unix seconds)",
            ["action", "rule", "user"],
            registry=registry,
        )
        self.dry_run = Gauge(
            "genv_enforce_dry_run",
            "1 when the daemon runs with --dry-run (it signals and changes nothing)",
            registry=registry,
        )
        self.info = Gauge(
            "genv_enforce_info",
            "The running daemon, with its version",
            ["version"],
            registry=registry,
        )
        Gauge(  # the daemon sets its metrics up as it starts
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            registry=registry,
        ).set(time.time())
        self.dry_run.set(1 if dry_run else 0)
        self.info.labels(__version__).set(1)
        for rule in RULES:
            self.violations.labels(rule).set(0)
        for reason in CYCLE_ERRORS:
            self.cycle_errors.labels(reason)
        self._plan: Plan | None = None
        self._violations: dict[str, int] = dict.fromkeys(RULES, 0)  # as the gauges say now
        self._signalling: Termination | None = None
        self._hosts_not_answering = 0
        # The page of ``registry`` as last rendered, and whether it is to be rendered again:
        # set after each change (by the daemon's thread), cleared before rendering (by a
        # server thread), so a change made while rendering is rendered next time.
        self._settled_page = b""
        self._stale = True
        self._rendering = threading.Lock()

    # -- the daemon's events ------------------------------------------------------------

    def finding(self, finding: Finding) -> None:
        """Counted per cycle, from the whole plan (see ``cycle``): a finding about a process
        already on its way out is not reported again, but it is still a violation."""

    def terminating(self, termination: Termination) -> None:
        self._signalling = termination

    def outcome(self, termination: Termination, outcome: Outcome, error: str = "") -> None:
        """After SIGTERM (it follows ``terminating``), or a SIGKILL that found nothing to kill."""
        sent = SIGTERM if termination is self._signalling else SIGKILL
        self._signalling = None
        self.outcomes.labels(termination.rule, sent, outcome.value).inc()
        if sent == SIGTERM and outcome is Outcome.SIGNALLED:
            user = _user(termination)
            self.terminations.labels(termination.rule, user).inc()
            self.last_action.labels(TERMINATE, termination.rule, user).set(self.clock())
        self._stale = True

    def killing(self, kill: Kill) -> None:
        termination = kill.termination
        if kill.outcome is not Outcome.SIGNALLED:  # nothing left to kill, or it failed
            self.outcomes.labels(termination.rule, SIGKILL, kill.outcome.value).inc()
        else:
            user = _user(termination)
            self.kills.labels(termination.rule, user).inc()
            self.outcomes.labels(termination.rule, SIGKILL, Outcome.SIGNALLED.value).inc()
            self.last_action.labels(KILL, termination.rule, user).set(self.clock())
        self._stale = True

    def detaching(self, detachment: Detachment) -> None:
        user = user_label(detachment.uid, detachment.username)
        self.detachments.labels(detachment.rule, user).inc()
        self.last_action.labels(DETACH, detachment.rule, user).set(self.clock())
        self._stale = True

    def detach_failed(self, detachments: Sequence[Detachment], error: str) -> None:
        """Counted as what did not happen: the detachments are tried again next cycle."""

    def cycle(self, report: CycleReport) -> None:
        self._per_cycle.observe(report.duration)
        if report.hosts_not_answering != self._hosts_not_answering:
            self._hosts_not_answering = report.hosts_not_answering
            self.hosts_not_answering.set(report.hosts_not_answering)
            self._stale = True
        if not report.acted:
            self.cycle_errors.labels(_error_reason(report)).inc()
            self._stale = True
            return
        self._per_cycle.last_cycle = self.clock() - report.duration  # when it began (Unix)
        if report.plan is not self._plan:  # an unchanged machine gives back the same plan
            self._plan = report.plan
            found = Tally(finding.rule for finding in report.plan.findings) if report.plan else {}
            counts = {rule: found.get(rule, 0) for rule in {*RULES, *found}}
            if counts != self._violations:  # (a machine that changes makes a new plan a cycle)
                self._violations = counts
                for rule, count in counts.items():
                    self.violations.labels(rule).set(count)
                self._stale = True

    # -- serving --------------------------------------------------------------------------

    def page(self) -> bytes:
        with self._rendering:  # one render at a time: none stores an older page over a newer
            if self._stale:
                self._stale = False
                try:
                    self._settled_page = generate_latest(self.registry)
                except BaseException:
                    self._stale = True  # rendered again next time, not an old page kept
                    raise
            settled = self._settled_page
        return settled + self._per_cycle_text.render()

    def serve(self, address: str, port: int) -> MetricsServer:
        return MetricsServer(address, port, self.page).start()
