"""Stopping ``genv enforce``: SIGTERM or SIGINT at any moment ends it within 2 seconds, and
the processes in their grace period at that moment get their SIGKILL first; SIGHUP does not
end it. Real daemons, real processes, signalled at many moments of their life."""

from __future__ import annotations

import os
import signal
import time

import pytest

from genv.domain.models import GpuSnapshot
from genv.domain.observation import Observation
from genv.enforce.daemon import Enforcer
from genv.enforce.executor import Detacher, Terminator
from genv.enforce.report import Reporter
from genv.enforce.rules import RuleConfig
from genv.store import State

from enforce_helpers import not_in_env, terminating

STOP_WITHIN = 2.0
STARTED = "DEBUG: started as pid"


def stop_and_time(daemon, signum: int) -> tuple[int, float]:
    began = time.monotonic()
    daemon.process.send_signal(signum)
    try:
        rc = daemon.process.wait(timeout=10)
    finally:
        daemon.close()
    return rc, time.monotonic() - began


def test_a_stop_signal_at_any_moment_ends_the_daemon_within_two_seconds(genv, machine, procs):
    """30 daemons, each signalled at another moment after its start (from its first line,
    written once its handlers are in: the first thing genv enforce does): during start-up, in
    a cycle, while terminating, in its sleep between cycles. Whatever it had signalled is dead
    when it has exited: SIGKILL at the end of a grace that had not ended yet."""
    exits = []
    stubborn = None
    for attempt in range(30):
        if stubborn is None or not procs.alive(stubborn):
            stubborn = procs.start(ignore_sigterm=True, pause=False)
            machine.add(stubborn.pid, attempt % 2, "1gi")
        signum = signal.SIGTERM if attempt % 2 == 0 else signal.SIGINT
        daemon = genv.start("--interval", "0.05", "--non-env-processes", "--grace", "60",
                            "--log-level", "debug")
        daemon.wait_for(STARTED, where="stderr")
        time.sleep((attempt % 10) * 0.04 + (attempt // 10) * 0.013)  # the moment: varied

        rc, took = stop_and_time(daemon, signum)

        exits.append(took)
        stderr = daemon.stderr()
        assert rc == 0, f"attempt {attempt}: exit {rc}\n{stderr}"
        assert took < STOP_WITHIN, f"attempt {attempt}: {took:.2f}s\n{stderr}"
        assert "Traceback" not in stderr
        if f"Terminating process {stubborn.pid} " in daemon.stdout():
            assert procs.wait_dead(stubborn, timeout=5), f"attempt {attempt}: left alive"
            assert stubborn.returncode == -signal.SIGKILL
            assert "still in their grace period" in stderr
            machine.remove(stubborn.pid)
        else:
            assert procs.alive(stubborn)
    assert max(exits) < STOP_WITHIN


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_processes_in_their_grace_are_killed_before_the_daemon_exits(genv, machine, procs,
                                                                      signum):
    stubborn = [procs.start(ignore_sigterm=True) for _ in range(3)]
    for index, process in enumerate(stubborn):
        machine.add(process.pid, index % 2, "1gi")
    daemon = genv.start("--interval", "0.2", "--non-env-processes", "--grace", "60")
    for process in stubborn:
        daemon.wait_for(f"Terminating process {process.pid} ")

    rc, took = stop_and_time(daemon, signum)

    assert rc == 0 and took < STOP_WITHIN
    for process in stubborn:
        assert procs.wait_dead(process, timeout=5)
        assert process.returncode == -signal.SIGKILL
        assert any(line.startswith(f"Killing process {process.pid} from environment N/A "
                                   "before genv enforce stops") for line in daemon.lines)
    assert "stopping: killing 3 process(es) still in their grace period now" in daemon.stderr()


def test_sighup_is_ignored_and_said(genv, machine, procs):
    daemon = genv.start("--interval", "0.2", "--non-env-processes", "--grace", "1")
    daemon.wait_for("enforcing every", where="stderr")

    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for("SIGHUP received and ignored", where="stderr")

    stray = procs.start()
    machine.add(stray.pid, 0, "1gi")
    daemon.wait_for(not_in_env(stray.pid))  # still enforcing
    assert procs.wait_dead(stray)
    assert daemon.running()
    rc, took = stop_and_time(daemon, signal.SIGTERM)
    assert rc == 0 and took < STOP_WITHIN


def test_a_one_shot_run_stopped_in_its_grace_kills_first(genv, machine, procs):
    stubborn = procs.start(ignore_sigterm=True)
    machine.add(stubborn.pid, 0, "1gi")
    one_shot = genv.start("--interval", "0", "--non-env-processes", "--grace", "60")
    one_shot.wait_for(terminating(stubborn.pid))

    rc, took = stop_and_time(one_shot, signal.SIGTERM)

    assert took < STOP_WITHIN
    assert rc == 0  # its cycle was done
    assert procs.wait_dead(stubborn, timeout=5)
    assert stubborn.returncode == -signal.SIGKILL


class SignalsWhileReading:
    """An observer whose reading hangs (a wedged nvidia-smi, say) after a SIGTERM came."""

    def __init__(self) -> None:
        self.calls = 0

    def observe(self):
        self.calls += 1
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (the main) thread at once
        time.sleep(30)
        return Observation((), (), (), ()), GpuSnapshot((), ()), State()


def test_a_stop_during_a_slow_reading_does_not_wait_for_it():
    observer = SignalsWhileReading()
    enforcer = Enforcer(observer, RuleConfig(), Terminator(1), Detacher(store=None),
                        Reporter())
    enforcer.install_signal_handlers()
    try:
        began = time.monotonic()
        enforcer.run_forever(10)
        took = time.monotonic() - began
    finally:
        enforcer.close()
    assert observer.calls == 1
    assert enforcer.stopper.signum == signal.SIGTERM
    assert took < STOP_WITHIN
    assert signal.getsignal(signal.SIGTERM) is not enforcer.stopper._on_stop  # put back
