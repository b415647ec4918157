"""The daemon's kernel liveness: found once by a scan, then followed by pid, rescanned rarely."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest

from genv.system import kernels, procfs
from genv.system.kernels import KernelTracker

from support import wait_cmdline

ROOT = 0


@pytest.fixture
def kernel():
    """A stand-in Jupyter kernel: a process whose command line names its connection file."""
    kernel_id = str(uuid.uuid4())
    process = subprocess.Popen(
        [f"/run/kernel-{kernel_id}.json", "60"], executable=shutil.which("sleep")
    )
    wait_cmdline(process.pid, kernel_id)
    yield kernel_id, process
    process.kill()
    process.wait()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_running_kernel_ids_finds_a_running_kernel(kernel):
    kernel_id, _ = kernel
    assert kernels.running_kernels(ROOT, frozenset({kernel_id, "gone"})) == {kernel_id}


def test_a_kernel_counts_only_for_its_owner(kernel):
    kernel_id, _ = kernel  # runs as root: counts for root (and for root in any environment)
    assert kernels.running_kernels(ROOT, frozenset({kernel_id})) == {kernel_id}
    assert kernels.running_kernels(40001, frozenset({kernel_id})) == {kernel_id}  # root's


def test_a_users_kernel_does_not_count_for_another_user(sleeper):
    kernel_id = str(uuid.uuid4())
    process = sleeper(user=_User(40002), argv=["/bin/sh", "-c", "sleep 60; :",
                                                f"/run/kernel-{kernel_id}.json"])
    wait_cmdline(process.pid, kernel_id)
    assert procfs.real_uid(process.pid) == 40002
    assert kernels.running_kernels(40001, frozenset({kernel_id})) == set()
    assert kernels.running_kernels(40002, frozenset({kernel_id})) == {kernel_id}


class _User:
    def __init__(self, uid: int) -> None:
        self.uid = uid

    def become(self, umask=None):
        def preexec():
            import os

            os.setgroups([])
            os.setgid(self.uid)
            os.setuid(self.uid)

        return preexec


def test_tracker_follows_a_found_kernel_without_scanning_again(kernel, monkeypatch):
    kernel_id, process = kernel
    clock = Clock()
    tracker = KernelTracker(procfs.is_running, rescan_after=30, clock=clock)
    assert tracker(ROOT, frozenset({kernel_id})) == {kernel_id}

    scans = []
    original = kernels.kernel_processes
    monkeypatch.setattr(kernels, "kernel_processes",
                        lambda wanted: scans.append(1) or original(wanted))
    assert tracker(ROOT, frozenset({kernel_id})) == {kernel_id}
    assert scans == []  # followed by pid, no scan

    process.kill()
    process.wait()
    assert tracker(ROOT, frozenset({kernel_id})) == set()
    assert scans == []  # it was looked for in the last scan, which is recent
    clock.now = 31
    assert tracker(ROOT, frozenset({kernel_id})) == set()
    assert scans == [1]  # a missing kernel is looked for again after rescan_after


def test_tracker_scans_for_an_id_it_never_looked_for(kernel, monkeypatch):
    kernel_id, _ = kernel
    clock = Clock()
    tracker = KernelTracker(procfs.is_running, rescan_after=3600, clock=clock)
    assert tracker(ROOT, frozenset({"not-a-kernel"})) == set()
    scans = counted_scans(monkeypatch)
    clock.now = kernels.OWNER_SCAN_INTERVAL
    assert tracker(ROOT, frozenset({"not-a-kernel", kernel_id})) == {kernel_id}
    assert scans == [{"not-a-kernel", kernel_id}]


def counted_scans(monkeypatch) -> list[set[str]]:
    """The ids each scan of /proc looks for, from now on."""
    scans: list[set[str]] = []
    original = kernels.kernel_processes
    monkeypatch.setattr(kernels, "kernel_processes",
                        lambda wanted: scans.append(set(wanted)) or original(wanted))
    return scans


def test_a_user_naming_new_ids_every_second_makes_a_scan_every_few_seconds(monkeypatch):
    """Kernel ids are the user's to write: one who writes a new one into their file every
    second costs root one scan of every command line in OWNER_SCAN_INTERVAL seconds, not one
    a second. Meanwhile the new id counts as running (their own environment stays alive, as
    a process of theirs would keep it); once scanned for, a made-up id is not running."""
    alice, bob = 40011, 40012
    clock = Clock()
    tracker = KernelTracker(procfs.is_running, rescan_after=3600, clock=clock)
    scans = counted_scans(monkeypatch)
    answers = []
    for second in range(10):
        clock.now = float(second)
        answers.append(tracker(alice, frozenset({f"made-up-{second}"})))
    assert len(scans) == 2  # at 0 s and at 5 s
    assert answers[0] == set()  # scanned for at once: no such kernel
    assert answers[1] == {"made-up-1"}  # not scanned for yet
    assert answers[5] == set()
    # Another user's new id is scanned for at once, whatever alice does.
    assert tracker(bob, frozenset({"bobs-made-up"})) == set()
    assert len(scans) == 3 and "bobs-made-up" in scans[-1]


def test_a_new_kernel_is_found_by_the_scan_it_waited_for(kernel, monkeypatch):
    kernel_id, _ = kernel
    clock = Clock()
    tracker = KernelTracker(procfs.is_running, rescan_after=3600, clock=clock)
    assert tracker(ROOT, frozenset({"first"})) == set()
    assert tracker(ROOT, frozenset({kernel_id})) == {kernel_id}  # waits: counts as running
    clock.now = kernels.OWNER_SCAN_INTERVAL
    scans = counted_scans(monkeypatch)
    assert tracker(ROOT, frozenset({kernel_id})) == {kernel_id}
    assert scans == [{kernel_id}]
    assert tracker(ROOT, frozenset({kernel_id})) == {kernel_id}
    assert len(scans) == 1  # found: followed by its pid from now on


def test_a_scan_keeps_only_the_kernel_ids_asked_for():
    """A command line is anyone's to fill with made-up kernel ids: none is kept unless some
    environment asks for it (no memory for a reader to lose to them)."""
    import subprocess
    import sys

    made_up = [f"--f=/tmp/kernel-fake{n}.json" for n in range(50)]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", *made_up])
    try:
        from support import wait_cmdline

        wait_cmdline(child.pid, "kernel-fake49.json")
        found = kernels.kernel_processes({"fake7", "other"})
        assert set(found) == {"fake7"}
        assert [pid for pid, _, _ in found["fake7"]] == [child.pid]
    finally:
        child.kill()
        child.wait()
