"""What genv enforce says about detaching is true: "Detaching ..." only once it is done, and
"no process of user X runs on device N, so no work is lost" only when none of X's processes
runs there (exempt ones and those outside any environment count)."""

from __future__ import annotations

import io
import os

import pytest

from genv.domain.models import Attachment, Environment
from genv.domain.observation import Observation
from genv.enforce.daemon import Enforcer
from genv.enforce.executor import Terminator
from genv.enforce.plan import combine
from genv.enforce.report import Reporter
from genv.enforce.rules import RuleConfig, survey

from enforce_helpers import terminating

NOT_SLEEP = ["tail", "-f", "/dev/null"]  # another program than the exempt one, any user may run


class FailingThenWorking:
    """A detacher whose store is full for the first ``failures`` attempts."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0

    def detach(self, detachments, attachments):
        self.attempts += 1
        if self.attempts <= self.failures:
            return "cannot save /var/tmp/genv/state-0.json: no space left on the device"
        return None


class Events:
    def __init__(self) -> None:
        self.failed = []
        self.done = []

    def detach_failed(self, detachments, error):
        self.failed.append((tuple(d.device_index for d in detachments), error))

    def detaching(self, detachment):
        self.done.append(detachment.device_index)

    def __getattr__(self, name):
        return lambda *args: None


def test_a_detachment_that_fails_prints_no_detaching_line_until_it_is_done(caplog):
    env = Environment("e1", 1000, "alice", 1.0)
    snapshot = Observation(
        devices=(), processes=(), environments=(env,),
        attachments=(Attachment(0, "e1", 1000, 2.0), Attachment(1, "e1", 1000, 3.0)),
    )
    plan = combine(survey(snapshot, RuleConfig(max_devices_per_user=1)))
    out = io.StringIO()
    detacher = FailingThenWorking(failures=3)
    enforcer = Enforcer(None, RuleConfig(), Terminator(1), detacher, Reporter(stream=out))
    events = Events()
    enforcer.add_reporter(events)

    problems: dict[str, str] = {}
    for _ in range(3):  # three cycles on a full disk
        problems = {}
        enforcer.execute(plan, snapshot.attachments, problems)
    assert out.getvalue().splitlines() == [
        "User alice is using 2 devices which is 1 more than the maximum allowed",
    ]  # the finding once, and no Detaching line
    assert "no space left" in problems["detach"]
    assert len(events.failed) == 3 and events.done == []

    enforcer.execute(plan, snapshot.attachments, {})  # space again
    assert out.getvalue().splitlines()[1:] == [
        "Detaching environment e1 of user alice from device 1",
        "  because no process of user alice runs on device 1, so no work is lost",
    ]
    assert events.done == [1]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (another user's processes)")
@pytest.mark.parametrize("where", ["in the environment", "outside any environment"])
def test_no_work_is_lost_is_never_claimed_while_a_process_of_the_user_runs_there(
        genv, machine, procs, env_of, alice, where):
    """Alice's environment holds devices 0 and 1, one too many; on device 0 runs a process of
    hers that the rules do not act on (an exempt program, in her environment or outside any),
    on device 1 one in the environment. Both devices hold work: the one attached last goes,
    and the line does not claim that no work is lost."""
    env_of("ae", user=alice, attach=[0, 1])
    # sleep, exempt by its path
    kept = procs.start(user=alice, eid="ae" if where == "in the environment" else None)
    machine.add(kept.pid, 0, "1gi")
    member = procs.start(NOT_SLEEP, user=alice, eid="ae")
    machine.add(member.pid, 1, "1gi")

    result = genv.enforce("--max-devices-per-user", "1", "--exempt-process", "sleep")

    assert result.lines == [
        f"User {alice.name} is using 2 devices which is 1 more than the maximum allowed",
        terminating(member.pid, "ae", "1"),
        f"Detaching environment ae of user {alice.name} from device 1",
        f"  because device 1 is the one user {alice.name} attached most recently",
    ]
    assert "no work is lost" not in result.stdout
    assert procs.wait_dead(member)
    assert procs.alive(kept)
    assert genv.attachments() == [("0", "ae")]
