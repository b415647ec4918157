"""The enforcement loop with its parts replaced: it survives what goes wrong in a cycle and
says each problem once."""

from __future__ import annotations

import io
import logging

from genv.domain.models import GpuSnapshot
from genv.domain.observation import Membership, Observation, ObservedProcess, ProcessFacts, Usage
from genv.enforce.daemon import Enforcer
from genv.enforce.executor import Detacher, Kill, Outcome, Terminator
from genv.enforce.findings import Finding, Termination
from genv.enforce.plan import combine
from genv.enforce.report import RECORD_FIELDS, ProblemLog, Reporter, Reporters
from genv.enforce.rules import RuleConfig
from genv.store import State

from enforce_helpers import json_lines, sigterm_counter
from support import start_of

EMPTY = Observation(devices=(), processes=(), environments=(), attachments=())


class FlakyObserver:
    """Fails in its first cycle with a bug, then sees an empty machine; stops the loop."""

    def __init__(self, cycles: int) -> None:
        self.calls = 0
        self.cycles = cycles
        self.enforcer: Enforcer | None = None

    def observe(self):
        self.calls += 1
        if self.calls >= self.cycles:
            self.enforcer.stop()
        if self.calls == 1:
            raise RuntimeError("a bug")
        return EMPTY, GpuSnapshot((), ()), State()


def enforcer_with(observer, stream: io.StringIO | None = None) -> Enforcer:
    enforcer = Enforcer(
        observer,
        RuleConfig(),
        Terminator(1),
        Detacher(store=None),  # never reached: nothing to detach
        Reporter(stream=stream or io.StringIO()),
    )
    observer.enforcer = enforcer
    return enforcer


def test_a_failing_cycle_does_not_end_the_daemon(caplog):
    observer = FlakyObserver(cycles=3)
    enforcer = enforcer_with(observer)
    with caplog.at_level(logging.ERROR, logger="genv.enforce"):
        enforcer.run_forever(0.01)
    assert observer.calls == 3
    assert "enforcement cycle failed" in caplog.text
    assert "a bug" in caplog.text


def test_problems_are_logged_when_they_appear_change_and_go(caplog):
    problems = ProblemLog()
    with caplog.at_level(logging.INFO, logger="genv.enforce"):
        for _ in range(3):
            problems.update({"state:a": "state file a is corrupt"})
        problems.update({"state:a": "state file a is corrupt", "gpu:x": "GPU: x"})
        problems.update({"gpu:x": "GPU: x"})
        problems.update({})
    assert [record.getMessage() for record in caplog.records] == [
        "state file a is corrupt",
        "GPU: x",
        "resolved: state file a is corrupt",
        "resolved: GPU: x",
    ]


def test_every_json_line_has_every_field_and_follows_the_schema():
    stream = io.StringIO()
    reporter = Reporter(json_lines=True, dry_run=True, stream=stream)
    facts = ProcessFacts(42, 1, 0, "root", "python", None)
    process = ObservedProcess(facts, (Usage(0, 10**9),), Membership.NO_ENV)
    termination = Termination(process, "non-env-processes", "why", (0,), chosen=True)
    reporter.finding(Finding("non-env-processes", "Process 42 is not running in a GPU "
                             "environment", (termination,)))
    reporter.terminating(termination)
    reporter.killing(Kill(termination, Outcome.SIGNALLED, 1.0))
    reporter.killing(Kill(termination, Outcome.SIGNALLED, 10.0, left=7.5))

    records = json_lines(stream.getvalue())

    assert [r["action"] for r in records] == ["finding", "terminate", "kill", "kill"]
    for record in records:
        assert {"time", "message", "dry_run", *RECORD_FIELDS} <= set(record)
        assert record["dry_run"] is True
        assert record["host"] is None
    assert records[1]["memory"] == 10**9
    assert records[1]["process"] == "python"
    assert records[2]["message"] == (
        "Killing process 42 from environment N/A, which did not exit within 1 seconds of SIGTERM"
    )
    assert records[3]["message"] == (
        "Killing process 42 from environment N/A before genv enforce stops (7.5 of its 10 "
        "seconds of grace were left)"
    )


def test_a_failing_sink_stops_neither_enforcement_nor_the_other_sinks(caplog):
    class Broken:
        def __getattr__(self, name):
            def fail(*args):
                raise BrokenPipeError(32, "Broken pipe")

            return fail

    told = []

    class Counting:
        def __getattr__(self, name):
            return lambda *args: told.append(name)

    reporters = Reporters(Broken(), Counting())
    facts = ProcessFacts(42, 1, 0, "root", "python", None)
    process = ObservedProcess(facts, (Usage(0, 1),), Membership.NO_ENV)
    termination = Termination(process, "non-env-processes", "why", (0,))
    with caplog.at_level(logging.ERROR, logger="genv.enforce"):
        for _ in range(3):
            reporters.terminating(termination)
    assert told == ["terminating"] * 3
    assert caplog.text.count("the report to Broken failed") == 1  # once, not per event


def test_a_violation_seen_again_in_the_next_cycles_is_acted_on_and_said_once():
    """The daemon sees the same process break the rule every cycle until it exits: one
    SIGTERM, one finding line, one "Terminating" line, and the SIGKILL after the grace."""
    stream = io.StringIO()
    with sigterm_counter() as (victim, count):
        facts = ProcessFacts(victim.pid, start_of(victim.pid), 0, "root", "python", None)
        process = ObservedProcess(facts, (Usage(0, 10**9),), Membership.NO_ENV)
        message = f"Process {victim.pid} is not running in a GPU environment"
        finding = Finding("non-env-processes", message,
                          (Termination(process, "non-env-processes", message, (0,)),))
        now = [1000.0]
        terminator = Terminator(grace=5, clock=lambda: now[0])
        enforcer = Enforcer(FlakyObserver(cycles=1), RuleConfig(), terminator,
                            Detacher(store=None), Reporter(stream=stream))

        for cycle in range(3):  # each cycle makes its plan anew from what it observed
            now[0] = 1000.0 + cycle
            enforcer.execute(combine([finding]))
        assert count() == 1
        now[0] = 1005.0
        enforcer.escalate()
        victim.wait(timeout=5)

    assert stream.getvalue().splitlines() == [
        message,
        f"Terminating process {victim.pid} from environment N/A that is running on GPU(s) 0",
        f"Killing process {victim.pid} from environment N/A, which did not exit within 5 "
        "seconds of SIGTERM",
    ]


def test_attachments_to_missing_devices_are_one_line_per_user():
    """A file may name thousands of devices that are not there: one line for its user."""
    from genv.domain.models import Attachment, Device
    from genv.domain.observation import Observation
    from genv.enforce.daemon import _missing_devices

    attachments = tuple(Attachment(d, f"e{d % 7}", 1000, 1.0) for d in range(2, 3000))
    attachments += (Attachment(9, "a1", 1001, 1.0), Attachment(0, "b", 1002, 1.0))
    snapshot = Observation((Device(0, "GPU-0", "", 1),), (), (), attachments)
    problems = _missing_devices(snapshot, frozenset({0}))
    assert len(problems) == 2
    assert problems["device:1001"] == (
        "environment a1 is attached to device 9, which is not present now")
    assert problems["device:1000"].startswith(
        "environments e0, e1, e2, e3, e4 (+2 more) of uid 1000")
    assert problems["device:1000"].endswith(
        "2, 3, 4, 5, 6 (+2993 more), which are not present now")
