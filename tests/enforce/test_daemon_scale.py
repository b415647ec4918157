"""Thousands of violators in one cycle, and descriptors above 1024: every one is terminated
and, when it ignores SIGTERM, killed after the grace (poll and epoll only, never select());
an error in one termination (EPERM, a vanished process, an unexpected OSError) never stops
the others."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time

import pytest

from genv.domain.observation import Membership, ObservedProcess, ProcessFacts, Usage
from genv.enforce.daemon import Enforcer
from genv.enforce.executor import Detacher, Outcome, Terminator
from genv.enforce.findings import Termination
from genv.enforce.plan import Plan
from genv.enforce.report import Reporter

from enforce_helpers import as_user
from support import start_of

VIOLATORS = 1200  # half of them ignore SIGTERM


def highest_fd(pid: int) -> int:
    try:
        return max((int(name) for name in os.listdir(f"/proc/{pid}/fd")), default=-1)
    except OSError:
        return -1


def open_files_limit(pid: int) -> tuple[str, str]:
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return soft, hard
    raise AssertionError("no open files limit")


def test_thousands_of_violators_over_1024_descriptors_are_all_terminated_then_killed(
        genv, machine, procs):
    gentle = [procs.start(pause=False) for _ in range(VIOLATORS // 2)]
    stubborn = [procs.start(ignore_sigterm=True, pause=False) for _ in range(VIOLATORS // 2)]
    everyone = gentle + stubborn
    machine.add_many([(p.pid, index % 2, "1mi") for index, p in enumerate(everyone)])

    # started with the usual soft limit of 1024: it raises its own to the hard limit
    daemon = genv.start("--interval", "0.5", "--non-env-processes", "--grace", "3",
                        open_files=1024)
    deadline = time.monotonic() + 90
    highest = -1
    while daemon.stdout().count("Killing process ") < len(stubborn):
        assert daemon.running(), daemon.stderr()
        assert time.monotonic() < deadline, daemon.stderr()[-2000:]
        highest = max(highest, highest_fd(daemon.process.pid))
        time.sleep(0.05)

    soft, hard = open_files_limit(daemon.process.pid)
    assert soft == hard
    assert highest > 1024  # pidfds of the watched and of the signalled processes
    out = daemon.stdout()
    for process in everyone:
        assert out.count(f"Terminating process {process.pid} ") == 1
    for process in stubborn:
        assert f"Killing process {process.pid} from environment N/A, which did not exit " in out
    for process in gentle:
        assert procs.wait_dead(process, timeout=10)
        assert process.returncode == -signal.SIGTERM
    for process in stubborn:
        assert procs.wait_dead(process, timeout=10)
        assert process.returncode == -signal.SIGKILL
    assert daemon.running()
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr()


# -- one failure does not stop the others ------------------------------------------------


def termination_of(process: subprocess.Popen | int, start: int | None = None) -> Termination:
    pid = process if isinstance(process, int) else process.pid
    started = start if start is not None else start_of(pid)
    facts = ProcessFacts(pid, started, os.getuid(), None, "sleep", None)
    observed = ObservedProcess(facts, (Usage(0, 1 << 20),), Membership.NO_ENV)
    return Termination(observed, "non-env-processes", "test", (0,))


class Told:
    """A second sink: what the daemon said, event by event."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[int, Outcome, str]] = []

    def outcome(self, termination, outcome, error=""):
        self.outcomes.append((termination.process.pid, outcome, error))

    def __getattr__(self, name):
        return lambda *args: None


def run_plan(terminations: list[Termination]) -> list[tuple[int, Outcome, str]]:
    told = Told()
    enforcer = Enforcer(None, None, Terminator(grace=30), Detacher(store=None), Reporter())
    enforcer.add_reporter(told)
    enforcer.execute(Plan((), tuple(terminations), ()))
    enforcer.terminator.close()
    return told.outcomes


def vanished(procs) -> tuple[int, int]:
    process = procs.start()
    started = start_of(process.pid)
    process.kill()
    process.wait()
    return process.pid, started


@pytest.mark.skipif(os.geteuid() != 0, reason="needs another user's processes")
def test_permission_denied_and_vanished_processes_do_not_stop_the_others(procs, alice, bob):
    """A daemon without root (alice's) among bob's processes: EPERM for those, and the rest
    are still terminated, in order."""
    first = procs.start(user=alice)
    bobs = procs.start(user=bob)
    gone_pid, gone_start = vanished(procs)
    second = procs.start(user=alice)
    terminations = [termination_of(first), termination_of(bobs),
                    termination_of(gone_pid, gone_start), termination_of(second)]

    said = as_user(alice, lambda: [(pid, outcome.value, error) for pid, outcome, error
                                   in run_plan(terminations)])

    assert said == repr([(first.pid, "signalled", ""), (bobs.pid, "permission-denied", ""),
                         (gone_pid, "gone", ""), (second.pid, "signalled", "")])
    assert procs.wait_dead(first) and procs.wait_dead(second)
    assert procs.alive(bobs)


def test_an_unexpected_error_in_one_termination_does_not_stop_the_others(procs, monkeypatch,
                                                                          caplog):
    victims = [procs.start() for _ in range(4)]
    cursed = victims[1].pid
    real_send = signal.pidfd_send_signal

    def send(fd, signum, *args):
        if _pid_of(fd) == cursed:
            raise OSError(errno.EIO, "Input/output error")
        return real_send(fd, signum, *args)

    monkeypatch.setattr(signal, "pidfd_send_signal", send)

    outcomes = run_plan([termination_of(victim) for victim in victims])

    assert [o[1] for o in outcomes] == [Outcome.SIGNALLED, Outcome.FAILED, Outcome.SIGNALLED,
                                        Outcome.SIGNALLED]
    assert outcomes[1][2] == "Input/output error (errno 5)"
    assert f"could not signal process {cursed}: Input/output error (errno 5)" in caplog.text
    for victim in victims:
        if victim.pid != cursed:
            assert procs.wait_dead(victim)
    assert procs.alive(victims[1])


def _pid_of(pidfd: int) -> int | None:
    """The pid a pidfd names (its fdinfo says)."""
    with open(f"/proc/self/fdinfo/{pidfd}") as info:
        for line in info:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    return None
