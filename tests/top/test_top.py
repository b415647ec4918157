"""``genv top`` as people use it: driven in a real terminal (tmux: send-keys, capture-pane),
as plain text when stdout is no terminal, and without root."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from genv.domain.observation import Membership, ObservedProcess, ProcessFacts, Usage
from genv.enforce.executor import Outcome
from genv.enforce.findings import Termination
from genv.metrics.enforcement import EnforcementMetrics


@pytest.fixture
def users(linux_users, user_runtime, fake_machine):
    return linux_users


@pytest.fixture
def machine(users, fake_machine, run_genv, new_env, sleeper):
    """alice's environment ea (10g on device 0, a 3gi process), bob's eb (device 1, 2gi)."""
    alice, bob = users.alice, users.bob
    fake_machine.devices = [
        {"total_memory": "80gi", "temperature": 50, "utilization": 90},
        {"total_memory": "40gi"},
    ]
    new_env("ea", user=alice, name="train", gpu_memory="10g")
    assert run_genv("devices", "attach", "--eid", "ea", "--index", "0", user=alice).rc == 0
    new_env("eb", user=bob, name="eval")
    assert run_genv("devices", "attach", "--eid", "eb", "--index", "1", user=bob).rc == 0
    a = sleeper(user=alice, env={"GENV_ENVIRONMENT_ID": "ea"})
    b = sleeper(user=bob, env={"GENV_ENVIRONMENT_ID": "eb"})
    fake_machine.processes = [
        {"pid": a.pid, "device": 0, "used_memory": "3gi"},
        {"pid": b.pid, "device": 1, "used_memory": "2gi"},
    ]
    fake_machine.write()
    return {"alice": a, "bob": b}


@pytest.fixture
def enforcer() -> Iterator[str]:
    """A daemon's metrics page that tells of one termination of bob's process."""
    metrics = EnforcementMetrics()
    facts = ProcessFacts(4321, 1, 1002, "bob", "sleep", None, exe="/usr/bin/sleep")
    termination = Termination(
        ObservedProcess(facts, (Usage(0, 1),), Membership.NO_ENV), "non-env-processes", "", (0,)
    )
    metrics.terminating(termination)
    metrics.outcome(termination, Outcome.SIGNALLED)
    server = metrics.serve("127.0.0.1", 0)
    try:
        yield server.url
    finally:
        server.close()


def test_top_in_a_terminal(users, machine, terminal, enforcer):
    alice, bob = users.alice.name, users.bob.name
    screen_of = terminal()
    screen_of.start([sys.executable, "-m", "genv", "top", "--interval", "0.3",
                     "--enforcer", enforcer])
    screen = screen_of.wait_for(lambda text: "Users and environments" in text and bob in text)
    lines = screen.splitlines()
    device = next(line for line in lines if line.strip().startswith("0 ") and "█" in line)
    assert "3.0Gi" in device and "9.3Gi" in device and "80.0Gi" in device  # used, reserved
    assert "90%" in device and "50C" in device
    assert "▒" in device and "░" in device
    second = next(line for line in lines if line.strip().startswith("1 ") and "Gi" in line)
    assert "40.0Gi" in second  # reserved whole (no capacity): no free cell
    assert "░" not in second
    alice_row = next(line for line in lines if line.strip().startswith(alice))
    assert "1 env(s)" in alice_row and "3.0Gi / 9.3Gi" in alice_row
    env_row = next(line for line in lines if line.strip().startswith("ea"))
    assert "train" in env_row and str(machine["alice"].pid) in env_row
    assert "terminate" in screen and "non-env-processes" in screen and "x1" in screen
    assert "sort: user" in screen
    assert screen.index(alice) < screen.index(bob)  # by name

    screen_of.keys("s")  # sort by memory: alice (3gi) first, then bob (2gi)
    screen_of.wait_for(lambda text: "sort: memory" in text)
    screen_of.keys("s")  # by devices
    screen = screen_of.wait_for(lambda text: "sort: devices" in text)

    screen_of.keys("u")
    screen_of.wait_for(lambda text: "user (Enter to show, Esc to cancel)" in text)
    screen_of.keys(bob, literal=True)
    screen_of.keys("Enter")
    screen = screen_of.wait_for(lambda text: f"user: {bob}" in text)
    rows = screen.split("Users and environments", 1)[1]
    assert bob in rows and alice not in rows.split("Enforcer")[0]
    assert "eb" in rows and "eval" in rows

    screen_of.keys("a")  # everyone again
    screen_of.wait_for(lambda text: alice in text.split("Users and environments", 1)[1])
    screen_of.keys("q")
    deadline = time.monotonic() + 10
    while screen_of.running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not screen_of.running()


def test_plain_text_when_not_a_terminal(users, machine, run_genv):
    result = run_genv("top")
    assert result.rc == 0, result.err
    assert "\x1b[" not in result.out  # no escape codes into a pipe
    assert result.out.startswith("genv top")
    assert "Devices" in result.out and users.alice.name in result.out


def test_anyone_may_run_it(users, machine, run_genv):
    """No root: alice sees every environment (state files are readable by all), her own
    processes in her environment, and bob's as processes whose environment she cannot tell."""
    alice, bob = users.alice, users.bob
    result = run_genv("top", "--once", user=alice)
    assert result.rc == 0, result.err
    lines = result.out.splitlines()
    env_row = next(line for line in lines if line.strip().startswith("ea"))
    assert str(machine["alice"].pid) in env_row
    bob_process = next(line for line in lines if f"pid {machine['bob'].pid}" in line)
    assert "env unknown" in bob_process
    assert any(line.strip().startswith(bob.name) for line in lines)


def test_names_that_look_like_markup_are_shown_as_they_are():
    """A process or environment may be called anything: rich must not read it as markup
    (``[/x]`` would crash everyone's genv top, ``[link=...]`` would plant a link)."""
    from rich.console import Console
    from rich.table import Table

    from genv.top.render import _add_row

    table = Table()
    for _ in range(2):
        table.add_column("c")
    _add_row(table, "[/x]", "[link=http://evil]sudo[/link]")
    console = Console(record=True, width=80)
    console.print(table)
    shown = console.export_text()
    assert "[/x]" in shown and "[link=http://evil]sudo[/link]" in shown
