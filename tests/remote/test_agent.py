"""``genv usage serve`` and ``genv usage execute`` on this machine, without SSH: a plan acts
only on the very processes of the latest snapshot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers_remote import wait_exit
from support import start_of, wait_environ


class Agent:
    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items()}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "genv", "usage", "serve", *args], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.hello = json.loads(self.process.stdout.readline())

    def ask(self, **request):
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> int:
        self.process.stdin.close()
        return self.process.wait(timeout=30)


def _termination(process, boot_id, start=None):
    return {"pid": process.pid, "start": start if start is not None else start_of(process.pid),
            "boot_id": boot_id, "rule": "non-env-processes", "reason": "test"}


def test_serve_acts_only_on_the_latest_snapshot(fake_machine, sleeper):
    target = sleeper(env={"GENV_TEST": "1"})
    wait_environ(target.pid)
    fake_machine.add_process(target.pid, 0)
    agent = Agent("--grace", "5")
    start = start_of(target.pid)
    try:
        assert agent.hello["op"] == "hello" and agent.hello["root"] is True
        boot = agent.hello["boot_id"]
        first = agent.ask(op="snapshot")
        assert [p[0] for p in first["observation"]["processes"]] == [target.pid]
        second = agent.ask(op="snapshot", full=False)
        assert second.get("same") is True and second["snapshot"] != first["snapshot"]
        stale = agent.ask(op="execute", snapshot=first["snapshot"],
                          terminations=[_termination(target, boot)])
        assert stale["error"] == "stale"
        wrong = agent.ask(op="execute", snapshot=second["snapshot"],
                          terminations=[_termination(target, boot, start=1)])
        assert wrong["terminations"] == [[target.pid, 1, "refused"]]
        other_boot = agent.ask(op="execute", snapshot=second["snapshot"],
                               terminations=[_termination(target, "another-boot")])
        assert other_boot["terminations"][0][2] == "refused"
        assert target.poll() is None
        done = agent.ask(op="execute", snapshot=second["snapshot"],
                         terminations=[_termination(target, boot)])
        assert done["terminations"] == [[target.pid, start, "signalled"]]
        wait_exit(target)
    finally:
        assert agent.close() == 0


def test_serve_kills_after_grace_and_says_so(fake_machine, sleeper):
    stubborn = sleeper(argv=["sh", "-c", "trap '' TERM; while :; do sleep 1; done"],
                       env={"GENV_TEST": "1"})
    wait_environ(stubborn.pid)
    fake_machine.add_process(stubborn.pid, 0)
    agent = Agent("--grace", "0.3")
    try:
        snapshot = agent.ask(op="snapshot")
        done = agent.ask(op="execute", snapshot=snapshot["snapshot"],
                         terminations=[_termination(stubborn, agent.hello["boot_id"])])
        assert done["terminations"][0][2] == "signalled"
        wait_exit(stubborn)  # SIGKILL came on time, with no request in between
        later = agent.ask(op="snapshot", full=False)
        assert later["events"] == [{"event": "kill", "pid": stubborn.pid,
                                    "start": done["terminations"][0][1],
                                    "outcome": "signalled"}]
    finally:
        agent.close()


def test_execute_checks_a_snapshot_taken_now(fake_machine, sleeper, run_genv):
    target = sleeper(env={"GENV_TEST": "1"})
    wait_environ(target.pid)
    fake_machine.add_process(target.pid, 0)
    hello = json.loads(run_genv("usage", "snapshot", "--format", "json").out)
    plan = {"terminations": [_termination(target, hello["boot_id"], start=2)], "grace": 1}
    process = subprocess.run([sys.executable, "-m", "genv", "usage", "execute"],
                             input=json.dumps(plan), capture_output=True, text=True,
                             check=False, timeout=60)
    assert json.loads(process.stdout)["terminations"][0][2] == "refused", process
    assert target.poll() is None
    plan["terminations"] = [_termination(target, hello["boot_id"])]
    process = subprocess.run([sys.executable, "-m", "genv", "usage", "execute"],
                             input=json.dumps(plan), capture_output=True, text=True,
                             check=False, timeout=60)
    assert json.loads(process.stdout)["terminations"][0][2] == "signalled", process
    wait_exit(target)


def test_serve_usage_answers_the_view_of_genv_monitor_and_never_acts(fake_machine, sleeper,
                                                                    new_env, run_genv):
    """``genv usage serve --usage`` (genv remote monitor and top): this host's usage view as
    LocalSource builds it, ``same`` while only the time changes, and no request that acts."""
    from genv.metrics.local import LocalSource
    from genv.metrics.usage_wire import decode_usage

    new_env("ea", name="train", gpu_memory="4g")
    assert run_genv("devices", "attach", "--eid", "ea", "--index", "1").rc == 0
    target = sleeper(env={"GENV_ENVIRONMENT_ID": "ea"})
    wait_environ(target.pid)
    fake_machine.add_process(target.pid, 1, "3gi")
    agent = Agent("--usage")
    try:
        assert agent.hello["serves"] == ["usage"]
        first = agent.ask(op="usage", id=1)
        assert first["id"] == 1 and "error" not in first, first
        view = decode_usage(first["usage"])
        source = LocalSource()
        try:
            here = source.read()
        finally:
            source.close()
        assert view.devices == here.devices and view.environments == here.environments
        assert view.processes == here.processes and view.users == here.users
        (env,) = view.environments
        assert env.eid == "ea" and env.used == ((1, 3 * 1024**3),) and env.processes == (
            target.pid,)
        again = agent.ask(op="usage", full=False)
        assert again["same"] is True and again["time"] >= view.time
        for op in ("snapshot", "execute", "finish"):
            refused = agent.ask(op=op, snapshot="x", terminations=[
                _termination(target, agent.hello["boot_id"])])
            assert "only answers usage" in refused["error"], refused
        assert target.poll() is None
        fake_machine.add_process(target.pid, 0, "1gi")  # it changed: the whole view again
        changed = agent.ask(op="usage", full=False)
        assert "same" not in changed
        assert len(decode_usage(changed["usage"]).processes[0].memory) == 2
    finally:
        assert agent.close() == 0
