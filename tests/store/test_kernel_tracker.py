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


def test_tracker_scans_for_an_id_it_never_looked_for(kernel):
    kernel_id, _ = kernel
    tracker = KernelTracker(procfs.is_running, rescan_after=3600, clock=Clock())
    assert tracker(ROOT, frozenset({"not-a-kernel"})) == set()
    assert tracker(ROOT, frozenset({"not-a-kernel", kernel_id})) == {kernel_id}


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
