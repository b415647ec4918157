"""A daemon cycle on an unchanged machine reuses the last snapshot and plan, and still sees
the first change: a new process, a process that was replaced, a state change."""

from __future__ import annotations

import io
import os
import subprocess

import pytest

from genv.backends.fake import FakeBackend
from genv.backends.machine_file import write_machine
from genv.enforce.daemon import Enforcer
from genv.enforce.executor import Detacher, Terminator
from genv.enforce.observe import Observer
from genv.enforce.report import Reporter
from genv.enforce.rules import RuleConfig
from genv.store import Store
from genv.system.watch import ProcessWatcher

from support import wait_environ


@pytest.fixture
def world(tmp_path):
    machine = tmp_path / "machine.json"
    children: list[subprocess.Popen] = []

    def start(**env: str) -> subprocess.Popen:
        child = subprocess.Popen(["sleep", "60"], env={**os.environ, **env})
        children.append(child)
        wait_environ(child.pid)  # ready: the kernel shows its environment
        return child

    def describe(*placements: tuple[subprocess.Popen, int]) -> None:
        write_machine(machine, [{"total_memory": "80gi"}] * 2,
                      [{"pid": p.pid, "device": d, "used_memory": "1gi"} for p, d in placements])

    watcher = ProcessWatcher()
    store = Store(tmp_path / "state", alive=watcher.runs_as)
    out = io.StringIO()
    enforcer = Enforcer(
        Observer(FakeBackend(machine), store, watcher),
        RuleConfig(non_env_processes=True),
        Terminator(grace=1),
        Detacher(store),
        Reporter(stream=out),
    )
    yield start, describe, store, enforcer, out
    for child in children:
        child.kill()
        child.wait()
    watcher.close()


def env_with_member(start, describe, store) -> subprocess.Popen:
    """Environment e1 (kept alive by a process) on device 0, and a GPU process of it there."""
    anchor = start()
    with store.transaction() as tx:
        tx.activate("e1", pid=anchor.pid)
        tx.attach("e1", 0)
    member = start(GENV_ENVIRONMENT_ID="e1")
    describe((member, 0))
    return member


def test_unchanged_machine_reuses_the_snapshot_and_the_plan(world):
    start, describe, store, enforcer, out = world
    env_with_member(start, describe, store)

    first = enforcer.cycle()
    snapshot = enforcer.observer.observe()[0]
    second = enforcer.cycle()
    assert first is not None and first.empty
    assert second is first  # nothing changed: the plan was not worked out again
    assert enforcer.observer.observe()[0] is snapshot
    assert out.getvalue() == ""


def test_a_new_stray_process_is_caught_on_the_next_cycle(world):
    start, describe, store, enforcer, out = world
    quiet = start()
    describe()
    assert enforcer.cycle().empty
    describe((quiet, 1))
    plan = enforcer.cycle()
    assert [t.process.pid for t in plan.terminations] == [quiet.pid]
    assert f"Process {quiet.pid} is not running in a GPU environment" in out.getvalue()
    assert quiet.wait(timeout=5) == -15


def test_a_state_change_is_seen_even_when_the_gpus_read_the_same(world):
    start, describe, store, enforcer, out = world
    member = env_with_member(start, describe, store)
    assert enforcer.cycle().empty
    with store.transaction() as tx:
        tx.detach("e1", 0)
    plan = enforcer.cycle()
    assert [t.process.pid for t in plan.terminations] == [member.pid]
    assert f"Process {member.pid} from environment e1 is using non-attached GPU(s) 0" in (
        out.getvalue()
    )


class Recorder:
    """A second sink, as a metrics exporter would be: every event, every cycle."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.cycles: list = []

    def finding(self, finding):
        self.events.append(("finding", finding.rule))

    def terminating(self, termination):
        self.events.append(("terminating", termination.process.pid))

    def outcome(self, termination, outcome, error=""):
        self.events.append(("outcome", outcome.value))

    def killing(self, kill):
        self.events.append(("killing", kill.termination.process.pid))

    def detaching(self, detachment):
        self.events.append(("detaching", detachment.device_index))

    def detach_failed(self, detachments, error):
        self.events.append(("detach_failed", error))

    def cycle(self, report):
        self.cycles.append(report)


def test_a_second_reporter_is_told_every_event_and_every_cycle(world):
    start, describe, store, enforcer, out = world
    recorder = Recorder()
    enforcer.add_reporter(recorder)
    member = env_with_member(start, describe, store)
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; while :; do sleep 1; done"])
    try:
        wait_environ(member.pid)
        describe((member, 0), (stubborn, 1))
        enforcer.terminator.grace = 0  # its SIGKILL is due at once

        enforcer.cycle()
        enforcer.escalate()
        second = enforcer.cycle()  # nothing new to say

        assert recorder.events == [
            ("finding", "non-env-processes"),
            ("terminating", stubborn.pid),
            ("outcome", "signalled"),
            ("killing", stubborn.pid),
        ]
        assert [c.acted for c in recorder.cycles] == [True, True]
        assert recorder.cycles[0].terminations == 1 and not recorder.cycles[0].reused
        assert all(c.duration >= 0 for c in recorder.cycles)
        assert stubborn.wait(timeout=5) == -9

        enforcer.config = RuleConfig(non_env_processes=True, max_devices_per_user=0)
        enforcer.cycle()
        assert recorder.events[4:] == [
            ("finding", "max-devices-per-user"),
            ("terminating", member.pid),
            ("outcome", "signalled"),
            ("detaching", 0),
        ]
        assert second is not None
        # the terminal reporter said the same, in the product description's words
        assert out.getvalue().splitlines()[-1] == "Detaching environment e1 of user root " \
                                                  "from device 0"
    finally:
        stubborn.kill()
        stubborn.wait()
