"""``genv enforce`` as a daemon: it keeps enforcing through bad state files and vanishing
devices, says each problem once, and stops cleanly on SIGTERM and SIGINT."""

from __future__ import annotations

import signal
import sys
import time

import pytest

from enforce_helpers import IGNORES_SIGTERM, not_in_env


def started(daemon) -> None:
    daemon.wait_for("enforcing every", where="stderr")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_daemon_stops_cleanly_and_quickly(genv, machine, signum):
    daemon = genv.start("--interval", "30", "--log-level", "debug")
    started(daemon)
    daemon.wait_for("cycle done in", where="stderr")  # its first cycle is over: it waits

    began = time.monotonic()
    rc = daemon.stop(signum)

    assert rc == 0
    assert time.monotonic() - began < 3
    assert "Traceback" not in daemon.stderr()
    assert "stopped" in daemon.stderr()


def test_daemon_enforces_every_cycle(genv, machine, procs):
    daemon = genv.start("--interval", "0.3", "--non-env-processes", "--grace", "1")
    started(daemon)
    first = procs.start()
    machine.add(first.pid, 0, "1gi")
    daemon.wait_for(not_in_env(first.pid))
    assert procs.wait_dead(first)
    second = procs.start()
    machine.add(second.pid, 1, "1gi")
    daemon.wait_for(not_in_env(second.pid))
    assert procs.wait_dead(second)
    assert daemon.stop() == 0
    assert daemon.stdout().count(not_in_env(first.pid)) == 1  # once: it died


def test_daemon_kills_a_process_ignoring_sigterm_after_the_grace(genv, machine, procs):
    daemon = genv.start("--interval", "0.3", "--non-env-processes", "--grace", "1")
    started(daemon)
    stubborn = procs.start([sys.executable, "-c", IGNORES_SIGTERM], ready="ready")
    machine.add(stubborn.pid, 0, "1gi")

    daemon.wait_for(f"Killing process {stubborn.pid}", timeout=10)

    # each action is told once, although several cycles saw the process during its grace
    assert daemon.lines == [
        not_in_env(stubborn.pid),
        f"Terminating process {stubborn.pid} from environment N/A that is running on GPU(s) 0",
        f"Killing process {stubborn.pid} from environment N/A, which did not exit within "
        "1 seconds of SIGTERM",
    ]

    assert procs.wait_dead(stubborn)
    assert stubborn.returncode == -signal.SIGKILL
    assert daemon.running()
    assert daemon.stop() == 0


def test_corrupt_state_is_logged_once_and_enforcement_goes_on(genv, machine, procs, env_of,
                                                              state_dir):
    shell = env_of("e1", attach=[0, 1])
    member = procs.start(eid="e1")
    machine.add(member.pid, 1, "1gi")
    daemon = genv.start("--interval", "0.3", "--non-env-processes", "--grace", "1")
    started(daemon)
    state_file = state_dir / "state-0.json"
    # the daemon publishes who holds which device in root's file, once: wait for that write
    deadline = time.monotonic() + 10
    while b'"holdings"' not in state_file.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    # root breaks its own state file: that shields nothing (as if root had no environments)
    temporary = state_dir / "corrupt.tmp"
    temporary.write_text("{ this is not json")
    temporary.replace(state_file)

    daemon.wait_for("is corrupt", where="stderr")
    daemon.wait_for(not_in_env(member.pid))
    assert procs.wait_dead(member)

    # a new violation is still enforced, cycles later
    stray = procs.start()
    machine.add(stray.pid, 0, "1gi")
    daemon.wait_for(not_in_env(stray.pid))
    assert procs.wait_dead(stray)
    assert daemon.running()
    assert daemon.stderr().count("is corrupt") == 1  # once, not every cycle
    assert daemon.stdout().count(f"Terminating process {member.pid} ") == 1

    # repaired: said once, and back to normal
    state_file.unlink()
    daemon.wait_for("resolved: state file", where="stderr")
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr()
    assert procs.alive(shell)


def test_gpu_device_vanishing_while_the_daemon_runs(genv, machine, procs, env_of):
    env_of("e1", attach=[1])
    member = procs.start(eid="e1")
    machine.add(member.pid, 1, "1gi")
    daemon = genv.start("--interval", "0.3", "--non-env-processes", "--grace", "1",
                        "--max-devices-per-user", "1", "--log-level", "debug")
    started(daemon)
    daemon.wait_cycles(1)

    machine.set_devices("80gi")  # device 1 fell off the bus

    daemon.wait_for("not present", where="stderr")
    daemon.wait_cycles(3)
    assert daemon.running()
    assert daemon.stderr().count("device 1, which is not present now") == 1
    assert procs.alive(member)

    stray = procs.start()
    machine.add(stray.pid, 0, "1gi")
    daemon.wait_for(not_in_env(stray.pid))
    assert procs.wait_dead(stray)

    machine.set_devices("80gi", "80gi")  # back
    daemon.wait_for("resolved:", where="stderr")
    daemon.wait_cycles(2)
    assert daemon.running()
    assert procs.alive(member)
    assert str(member.pid) not in daemon.stdout()
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr()


def test_machine_file_broken_while_the_daemon_runs(genv, machine, procs):
    daemon = genv.start("--interval", "0.3", "--non-env-processes", "--grace", "1",
                        "--log-level", "debug")
    started(daemon)
    machine.path.write_text("{ not json")

    daemon.wait_for("cannot take a snapshot", where="stderr")
    daemon.wait_cycles(3)
    assert daemon.running()
    assert daemon.stderr().count("cannot take a snapshot") == 1

    machine.write()
    stray = procs.start()
    machine.add(stray.pid, 0, "1gi")
    daemon.wait_for(not_in_env(stray.pid))
    assert procs.wait_dead(stray)
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr()
