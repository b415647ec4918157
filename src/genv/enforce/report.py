"""What enforcement tells: every event of the daemon goes to one sink, the Reporter.

Events: a finding, a termination begun and its outcome, a SIGKILL, a detachment (told only
once it is done), a detachment that failed, and the end of each cycle (its duration and
whether it could act). The terminal Reporter prints the product description's lines on
stdout (or one JSON object per finding and action, ``docs/log-schema.json``) and logs the
rest; another sink (metrics) is attached beside it with ``Reporters.add``, without touching
the loop. Problems that last (a bad file, a lost GPU) go through ProblemLog: once when they
appear, once when they clear.

No line can gain a line or a field from what users or their processes chose: every line is
passed through ``one_line`` (validate.safe_text on each character that is not printable).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence

from genv.domain.validate import safe_text
from genv.domain.values import field, value
from genv.enforce.executor import Kill, Outcome
from genv.enforce.findings import Detachment, Finding, Termination
from genv.enforce.plan import Plan
from genv.system import logs

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from typing import Any, Protocol, TextIO

    class Sink(Protocol):
        """What every reporter gets told, in the order it happens."""

        def finding(self, finding: Finding) -> None: ...

        def terminating(self, termination: Termination) -> None: ...

        def outcome(self, termination: Termination, outcome: Outcome, error: str = "") -> None: ...

        def killing(self, kill: Kill) -> None: ...

        def detaching(self, detachment: Detachment) -> None: ...

        def detach_failed(self, detachments: Sequence[Detachment], error: str) -> None: ...

        def cycle(self, report: CycleReport) -> None: ...


log = logs.logger("genv.enforce")

DRY_RUN_PREFIX = "[dry-run] "

# Every JSON line has all of these keys (null where one does not apply; ``device`` is always a
# list), so that log pipelines can rely on them. docs/log-schema.json is the contract.
RECORD_FIELDS = (
    "host",
    "rule",
    "action",
    "pid",
    "uid",
    "user",
    "environment",
    "process",
    "device",
    "memory",
    "reason",
)
MAX_LINE = 4096


def one_line(text: str) -> str:
    """``text`` as one line that says only what it says: every character that could end the
    line or hide text (control, format, separators) is escaped with safe_text; printable text,
    backslashes included, is left as it is (so that text escaped before is not escaped twice)."""
    if len(text) <= MAX_LINE and text.isprintable():
        return text
    escaped = "".join(c if c.isprintable() else safe_text(c) for c in text[:MAX_LINE])
    return escaped + ("..." if len(text) > MAX_LINE else "")


def _devices(indices: Sequence[int]) -> str:
    return ",".join(str(index) for index in indices)


@value
class CycleReport:
    """One enforcement cycle, for sinks that count (metrics) and for the debug log.

    ``acted`` is false when the cycle observed too little to act on (``skipped`` says why:
    the GPUs could not be read, or only partly; the state folder could not be read); then
    nothing was terminated or detached in it.
    """

    started: float  # time.monotonic() at its start
    duration: float  # seconds
    acted: bool
    skipped: str | None = None
    findings: int = 0
    terminations: int = 0
    detachments: int = 0
    reused: bool = False  # the plan of the previous cycle was reused: nothing had changed
    plan: Plan | None = field(default=None, compare=False)  # what it concluded, if it got there
    hosts_not_answering: int = 0  # hosts of a cluster that gave no snapshot (0 on one host)


class Reporter:
    """The terminal sink: the product description's lines (or JSON lines) on ``stream``."""

    def __init__(
        self,
        json_lines: bool = False,
        dry_run: bool = False,
        stream: TextIO | None = None,
        host: str | None = None,
    ) -> None:
        self.json_lines = json_lines
        self.dry_run = dry_run
        self.stream = stream or sys.stdout
        self.host = host  # the cluster's host name (genv remote); None on one host

    def _emit(self, line: str, record: dict[str, Any] | None) -> None:
        line = one_line(line)
        if self.json_lines:
            if record is None:
                return
            record = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **dict.fromkeys(RECORD_FIELDS),
                "device": [],
                **record,
                "host": self.host,
                "message": line,
                "dry_run": self.dry_run,
            }
            self.stream.write(json.dumps(record) + "\n")
        else:
            self.stream.write((DRY_RUN_PREFIX if self.dry_run else "") + line + "\n")
        self.stream.flush()

    def finding(self, finding: Finding) -> None:
        self._emit(
            finding.message,
            {
                "rule": finding.rule,
                "action": "finding",
                "reason": finding.message,
                **finding.details,
            },
        )

    def terminating(self, termination: Termination) -> None:
        process = termination.process
        line = (
            f"Terminating process {process.pid} from environment {process.eid or 'N/A'} "
            f"that is running on GPU(s) {_devices(termination.devices)}"
        )
        self._emit(line, self._process_record(termination, "terminate"))
        if termination.chosen:
            self._emit(f"  because {termination.reason}", None)

    def killing(self, kill: Kill) -> None:
        termination = kill.termination
        if kill.outcome is not Outcome.SIGNALLED:
            self.outcome(termination, kill.outcome, kill.error)
            return
        process = termination.process
        who = f"process {process.pid} from environment {process.eid or 'N/A'}"
        if kill.early:
            line = (
                f"Killing {who} before genv enforce stops ({kill.left:.1f} of its "
                f"{kill.grace:g} seconds of grace were left)"
            )
        else:
            line = f"Killing {who}, which did not exit within {kill.grace:g} seconds of SIGTERM"
        self._emit(line, {**self._process_record(termination, "kill"), "grace": kill.grace})

    def detaching(self, detachment: Detachment) -> None:
        line = (
            f"Detaching environment {detachment.eid} of user {detachment.username} "
            f"from device {detachment.device_index}"
        )
        self._emit(
            line,
            {
                "rule": detachment.rule,
                "action": "detach",
                "uid": detachment.uid,
                "user": detachment.username,
                "environment": detachment.eid,
                "device": [detachment.device_index],
                "reason": detachment.reason,
            },
        )
        if detachment.chosen:
            self._emit(f"  because {detachment.reason}", None)

    def detach_failed(self, detachments: Sequence[Detachment], error: str) -> None:
        """Nothing on stdout (nothing was detached); the daemon logs the problem once."""

    def _process_record(self, termination: Termination, action: str) -> dict[str, Any]:
        process = termination.process
        return {
            "rule": termination.rule,
            "action": action,
            "pid": process.pid,
            "uid": process.facts.uid,
            "user": process.facts.username,
            "environment": process.eid,
            "process": process.facts.name,
            "device": list(termination.devices),
            "memory": process.total_memory,
            "reason": termination.reason,
        }

    def outcome(self, termination: Termination, outcome: Outcome, error: str = "") -> None:
        """Say what went wrong, if anything; a process that vanished is not a problem."""
        pid = termination.process.pid
        if outcome is Outcome.DENIED:
            log.error(
                "permission denied terminating process %d of %s: run genv enforce with sudo",
                pid,
                termination.process.facts.username or "another user",
            )
        elif outcome is Outcome.REUSED:
            log.warning(
                "process %d exited and its pid now belongs to another process; left alone", pid
            )
        elif outcome is Outcome.REFUSED:
            log.warning(
                "process %d is never terminated (init, genv itself, or its start time is unknown)",
                pid,
            )
        elif outcome is Outcome.FAILED:
            log.error("could not signal process %d: %s; the others go on", pid, error or "failed")

    def cycle(self, report: CycleReport) -> None:
        if log.isEnabledFor(logs.DEBUG):
            log.debug(
                "cycle done in %.1f ms: %s; %d findings, %d terminations, %d detachments%s",
                report.duration * 1000,
                "acted" if report.acted else f"nothing done ({report.skipped})",
                report.findings,
                report.terminations,
                report.detachments,
                " (plan reused)" if report.reused else "",
            )


class Reporters:
    """Several sinks told the same events, in order. A sink that fails (a closed stdout, a
    metrics bug) is logged, when its error changes, and never stops enforcement nor the
    other sinks."""

    def __init__(self, *sinks: Sink) -> None:
        self.sinks: list[Sink] = list(sinks)
        self._errors: dict[int, str] = {}

    def add(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def _each(self, event: str, *args: Any) -> None:
        for index, sink in enumerate(self.sinks):
            try:
                getattr(sink, event)(*args)
            except Exception as error:
                said = f"{type(error).__name__}: {error}"
                if self._errors.get(index) != said:
                    self._errors[index] = said
                    log.error(
                        "the report to %s failed (%s); enforcement goes on",
                        type(sink).__name__,
                        said,
                    )

    def finding(self, finding: Finding) -> None:
        self._each("finding", finding)

    def terminating(self, termination: Termination) -> None:
        self._each("terminating", termination)

    def outcome(self, termination: Termination, outcome: Outcome, error: str = "") -> None:
        self._each("outcome", termination, outcome, error)

    def killing(self, kill: Kill) -> None:
        self._each("killing", kill)

    def detaching(self, detachment: Detachment) -> None:
        self._each("detaching", detachment)

    def detach_failed(self, detachments: Sequence[Detachment], error: str) -> None:
        self._each("detach_failed", detachments, error)

    def cycle(self, report: CycleReport) -> None:
        self._each("cycle", report)


class ProblemLog:
    """Logs each problem when it appears and when it goes away, not once per cycle."""

    def __init__(self) -> None:
        self._active: dict[str, str] = {}

    def update(self, problems: dict[str, str]) -> None:
        for key, message in problems.items():
            if self._active.get(key) != message:
                log.warning("%s", message)
        for key in self._active.keys() - problems.keys():
            log.info("resolved: %s", self._active[key])
        self._active = dict(problems)

    @property
    def active(self) -> dict[str, str]:
        return dict(self._active)
