"""Signalling the very process the snapshot saw: SIGTERM, SIGKILL after the grace, never a
process that merely reuses the pid."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from genv.domain.observation import Membership, ObservedProcess, ProcessFacts, Usage
from genv.enforce.executor import Kill, Outcome, Terminator
from genv.enforce.findings import Termination

from enforce_helpers import sigterm_counter
from support import start_of

IGNORES_SIGTERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def termination_of(pid: int, started: int | None) -> Termination:
    facts = ProcessFacts(pid, started, os.getuid(), "root", "sleep", None)
    process = ObservedProcess(facts, (Usage(0, 1 << 30),), Membership.NO_ENV)
    return Termination(process, "non-env-processes", "test", (0,))


def start_time(pid: int) -> int:
    return start_of(pid)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_reused_pid_is_left_alone(procs):
    sleeper = procs.start()
    started = start_time(sleeper.pid)
    terminator = Terminator(grace=1)

    # the snapshot saw another process under this pid, which started earlier
    outcome = terminator.terminate(termination_of(sleeper.pid, started - 100))

    assert outcome is Outcome.REUSED
    assert terminator.pending == 0
    assert procs.alive(sleeper)
    assert not procs.wait_dead(sleeper, timeout=0.3)


def test_same_process_is_signalled(procs):
    sleeper = procs.start()
    terminator = Terminator(grace=1)

    outcome = terminator.terminate(termination_of(sleeper.pid, start_time(sleeper.pid)))

    assert outcome is Outcome.SIGNALLED
    assert procs.wait_dead(sleeper)
    assert sleeper.returncode == -signal.SIGTERM
    terminator.wait(1)
    assert terminator.pending == 0
    assert terminator.escalate_due() == []
    terminator.close()


def test_sigkill_after_the_grace_for_a_process_ignoring_sigterm(procs):
    stubborn = procs.start([sys.executable, "-c", IGNORES_SIGTERM], ready="ready")
    clock = Clock()
    terminator = Terminator(grace=5, clock=clock)
    termination = termination_of(stubborn.pid, start_time(stubborn.pid))

    assert terminator.terminate(termination) is Outcome.SIGNALLED
    # a second cycle during the grace does not signal again nor restart the grace
    assert terminator.terminate(termination) is Outcome.SIGNALLED
    assert terminator.next_deadline() == 1005.0
    assert not procs.wait_dead(stubborn, timeout=0.3)
    assert terminator.escalate_due() == []  # grace not over

    clock.now = 1005.0
    killed = terminator.escalate_due()

    assert killed == [Kill(termination, Outcome.SIGNALLED, 5)]
    assert not killed[0].early
    assert procs.wait_dead(stubborn)
    assert stubborn.returncode == -signal.SIGKILL
    assert terminator.pending == 0


def test_gone_refused_and_dry_run(procs):
    sleeper = procs.start()
    started = start_time(sleeper.pid)
    assert Terminator(1, dry_run=True).terminate(termination_of(sleeper.pid, started)) is (
        Outcome.DRY_RUN
    )
    assert procs.alive(sleeper)

    terminator = Terminator(1)
    assert terminator.terminate(termination_of(1, 0.0)) is Outcome.REFUSED
    assert terminator.terminate(termination_of(os.getpid(), start_time(os.getpid()))) is (
        Outcome.REFUSED
    )
    assert terminator.terminate(termination_of(sleeper.pid, None)) is Outcome.REFUSED
    assert procs.alive(sleeper)

    sleeper.kill()
    sleeper.wait()
    assert terminator.terminate(termination_of(sleeper.pid, started)) is Outcome.GONE


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start another user's process")
def test_permission_denied_is_reported_not_raised(procs, alice):
    """A non-root enforcer cannot signal another user's process: DENIED, nothing raised."""
    sleeper = procs.start()  # root's
    started = start_time(sleeper.pid)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(alice.gid)
            os.setuid(alice.uid)
            outcome = Terminator(1).terminate(termination_of(sleeper.pid, started))
            os.write(write, outcome.value.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        said = pipe.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert said == Outcome.DENIED.value
    assert procs.alive(sleeper)


def test_wait_returns_as_soon_as_the_processes_exit(procs):
    sleeper = procs.start()
    terminator = Terminator(grace=30)
    terminator.terminate(termination_of(sleeper.pid, start_time(sleeper.pid)))
    # the child exits at once on SIGTERM; wait must not take the whole grace
    procs.wait_dead(sleeper)
    terminator.wait(30)
    assert terminator.pending == 0


def test_unrelated_process_survives_the_terminator(procs):
    bystander = procs.start()
    victim = procs.start()
    terminator = Terminator(grace=1)
    terminator.terminate(termination_of(victim.pid, start_time(victim.pid)))
    assert procs.wait_dead(victim)
    assert procs.alive(bystander)


def test_a_second_cycle_neither_signals_again_nor_restarts_the_grace():
    """A process still there in the next cycle is on its way out: it gets no second SIGTERM,
    and its SIGKILL comes when the first grace ends, however many cycles see it."""
    clock = Clock()
    terminator = Terminator(grace=5, clock=clock)
    with sigterm_counter() as (process, count):
        termination = termination_of(process.pid, start_time(process.pid))

        assert terminator.terminate(termination) is Outcome.SIGNALLED
        assert count() == 1
        clock.now = 1003.0  # the next cycles, during the grace
        assert terminator.in_progress(termination)
        assert terminator.terminate(termination) is Outcome.SIGNALLED
        clock.now = 1004.0
        assert terminator.terminate(termination) is Outcome.SIGNALLED

        assert count() == 1
        assert terminator.pending == 1
        assert terminator.next_deadline() == 1005.0
        assert terminator.escalate_due() == []
        clock.now = 1005.0
        assert terminator.escalate_due() == [Kill(termination, Outcome.SIGNALLED, 5)]
        assert process.wait(timeout=5) == -signal.SIGKILL
        assert terminator.in_progress(termination)  # until a look between cycles sees it gone
        terminator.escalate_due()
        assert not terminator.in_progress(termination)


def test_a_process_sent_sigkill_is_on_its_way_out_until_it_is_seen_gone(procs):
    """A process dying in the driver may take seconds after SIGKILL: cycles in between
    neither signal it again nor tell of it again; once gone, it is let go."""
    stubborn = procs.start([sys.executable, "-c", IGNORES_SIGTERM], ready="ready")
    clock = Clock()
    terminator = Terminator(grace=1, clock=clock)
    termination = termination_of(stubborn.pid, start_time(stubborn.pid))
    assert terminator.terminate(termination) is Outcome.SIGNALLED
    clock.now += 2
    kills = terminator.escalate_due()
    assert [kill.outcome for kill in kills] == [Outcome.SIGNALLED]
    assert terminator.pending == 0
    assert terminator.in_progress(termination)  # sent SIGKILL: still on its way out
    assert terminator.terminate(termination) is Outcome.SIGNALLED  # and not signalled again
    assert procs.wait_dead(stubborn, timeout=10)
    terminator.escalate_due()  # between cycles: the dead are let go
    assert not terminator.in_progress(termination)
    terminator.close()
