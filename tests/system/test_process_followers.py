"""What the daemon keeps about GPU processes between cycles, and what makes it look again:
the kernel's process events (exec, uid), the pidfd watcher (exits), and the per-cycle check
where the kernel does not tell. A fact kept must never outlive what it says."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from genv.system import proc_events, procfs
from genv.system.proc_events import MAX_EVENTS_PER_DRAIN, ProcessEvents
from genv.system.process_facts import ProcessInspector
from genv.system.watch import ProcessWatcher

from support import wait_environ

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the process events need root")

# Waits for a line on stdin, then runs another program: pid and start stay, the program not.
EXEC_ON_LINE = "read line; exec sleep 60"


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def exec_later() -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        ["sh", "-c", EXEC_ON_LINE], stdin=subprocess.PIPE, env={"PATH": os.environ["PATH"],
                                                                 "GENV_ENVIRONMENT_ID": "e1"}
    )
    wait_environ(process.pid)
    return process


def run_other_program(process: subprocess.Popen[bytes]) -> None:
    before = procfs.executable(process.pid)
    assert process.stdin is not None
    process.stdin.write(b"go\n")
    process.stdin.flush()
    wait_until(lambda: procfs.executable(process.pid) not in (before, None))


@pytest.fixture
def events():
    found = ProcessEvents.open() if os.geteuid() == 0 else None
    yield found
    if found is not None:
        found.close()


def assert_an_exec_is_told(events: ProcessEvents) -> None:
    process = exec_later()
    try:
        run_other_program(process)
        wait_until(lambda: process.pid in (events.drain() or set()))
    finally:
        process.kill()
        process.wait()


@needs_root
def test_the_kernel_tells_of_an_exec(events):
    assert events is not None, "the proc connector works for root in the initial namespaces"
    events.drain()
    assert_an_exec_is_told(events)


@needs_root
def test_the_kernel_tells_of_a_uid_change(events):
    assert events is not None
    events.drain()
    child = subprocess.Popen([sys.executable, "-c", "import os, sys; sys.stdin.readline(); "
                              "os.setuid(65534); sys.stdin.readline()"], stdin=subprocess.PIPE)
    try:
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
        wait_until(lambda: procfs.real_uid(child.pid) == 65534)
        seen: set[int] = set()
        wait_until(lambda: child.pid in seen or bool(seen.update(events.drain() or ())))
    finally:
        child.kill()
        child.wait()


def _messages(sock: socket.socket) -> int:
    count = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.recv(256, socket.MSG_DONTWAIT)
            count += 1
    return count


@needs_root
@pytest.mark.parametrize("filtered", [True, False], ids=["6.6 subscription", "plain subscription"])
def test_forks_and_exits_of_the_machine_never_reach_the_daemon(filtered):
    """Kernels before 6.6 send every fork and exit of every process whatever the subscription
    asked: the socket's own filter drops them before they are queued."""
    sock = proc_events._subscribe(filtered)
    try:
        time.sleep(0.1)
        _messages(sock)
        for _ in range(20):
            child = os.fork()
            if child == 0:
                os._exit(0)
            os.waitpid(child, 0)
        time.sleep(0.2)
        assert _messages(sock) == 0
        assert_an_exec_is_told(ProcessEvents(sock))
    finally:
        sock.close()


def test_events_lost_say_so(events):
    """A kernel that drops events (the receive buffer overflowed: ENOBUFS) makes the caller
    look at every process; the next drain, with nothing lost, tells changes again."""
    if events is None:
        pytest.skip("no process events here")
    events._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the smallest
    for _ in range(64):  # each runs a program: an exec event, more than the buffer holds
        subprocess.run(["true"], check=True)
    assert events.drain() is None  # lost: the caller must look at every process
    assert events.drain() is not None  # (other programs may have run meanwhile)


def test_not_root_has_no_events(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert ProcessEvents.open() is None


# -- the inspector: facts kept, and forgotten when they may no longer hold ---------------------


@pytest.mark.parametrize("kernel_tells", [True, False], ids=["events", "per-cycle check"])
def test_a_process_that_runs_another_program_is_read_again(kernel_tells, events):
    if kernel_tells and events is None:
        pytest.skip("no process events here")
    watcher = ProcessWatcher()
    inspector = ProcessInspector(watcher, events if kernel_tells else None)
    process = exec_later()
    try:
        inspector.begin()
        first = inspector.facts(process.pid)
        assert first is not None and first.exe == os.path.realpath(shutil.which("sh"))
        assert inspector.begin() == set()  # nothing happened: nothing read again
        assert inspector.facts(process.pid) is first
        run_other_program(process)
        wait_until(lambda: process.pid in inspector.begin())
        second = inspector.facts(process.pid)
        assert second is not None and second.exe == os.path.realpath(shutil.which("sleep"))
        assert second.start == first.start
    finally:
        process.kill()
        process.wait()
        watcher.close()


def test_a_process_that_exits_is_forgotten(events):
    watcher = ProcessWatcher()
    inspector = ProcessInspector(watcher, events)
    process = subprocess.Popen(["sleep", "60"], env={"GENV_ENVIRONMENT_ID": "e1"})
    wait_environ(process.pid)
    try:
        inspector.begin()
        assert inspector.facts(process.pid) is not None and inspector.known(process.pid)
        process.kill()
        process.wait()
        assert inspector.begin() == {process.pid}
        assert not inspector.known(process.pid)
        assert inspector.facts(process.pid) is None
    finally:
        watcher.close()


def test_without_a_watcher_nothing_is_kept_between_cycles():
    inspector = ProcessInspector()
    process = subprocess.Popen(["sleep", "60"], env={"GENV_ENVIRONMENT_ID": "e1"})
    wait_environ(process.pid)
    try:
        inspector.begin()
        first = inspector.facts(process.pid)
        assert inspector.begin() == {process.pid}
        assert inspector.facts(process.pid) is not first
    finally:
        process.kill()
        process.wait()


def test_a_process_that_cannot_be_watched_is_checked_each_cycle(events):
    watcher = ProcessWatcher(max_watched=0)  # no pidfd for anyone
    inspector = ProcessInspector(watcher, events)
    process = subprocess.Popen(["sleep", "60"], env={"GENV_ENVIRONMENT_ID": "e1"})
    wait_environ(process.pid)
    try:
        inspector.begin()
        assert inspector.facts(process.pid) is not None
        assert inspector.begin() == set()
        process.kill()
        process.wait()
        assert inspector.begin() == {process.pid}
    finally:
        watcher.close()


def test_a_followed_process_is_let_go_when_forgotten():
    watcher = ProcessWatcher()
    process = subprocess.Popen(["sleep", "60"])
    try:
        start = procfs.start_of(process.pid)
        assert start is not None and watcher.follow(process.pid, start)
        watcher.refresh()  # asked about by nobody: a followed process is kept all the same
        assert watcher.take_gone() == []
        watcher.forget(process.pid, start)
        process.kill()
        process.wait()
        assert watcher.take_gone() == []  # let go: its exit is nobody's news
    finally:
        watcher.close()


def test_a_flood_of_events_never_holds_a_cycle(events, monkeypatch):
    """Events come faster than they are read (any user can fork and exec in a loop): one
    drain reads a bounded number, then says "look at every process"."""
    if events is None:
        pytest.skip("no process events here")
    reads = []

    def endless(buffer, size, flags):
        reads.append(1)
        return 16  # a message too short to name a process: read on

    monkeypatch.setattr(events, "_socket", type("S", (), {"recv_into": staticmethod(endless),
                                                          "close": lambda self: None})())
    monkeypatch.setattr(events, "_poller", type("P", (), {"poll": lambda self, t: [(0, 1)]})())
    assert events.drain() is None
    assert len(reads) == MAX_EVENTS_PER_DRAIN
