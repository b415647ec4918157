"""The daemon's kernel liveness: found once by a scan, then followed by pid, rescanned rarely."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest

from genv.system import processes
from genv.system.processes import KernelTracker


@pytest.fixture
def kernel():
    """A stand-in Jupyter kernel: a process whose command line names its connection file."""
    kernel_id = str(uuid.uuid4())
    process = subprocess.Popen(
        [f"/run/kernel-{kernel_id}.json", "60"], executable=shutil.which("sleep")
    )
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
    assert processes.running_kernel_ids({kernel_id, "gone"}) == {kernel_id}


def test_tracker_follows_a_found_kernel_without_scanning_again(kernel, monkeypatch):
    kernel_id, process = kernel
    clock = Clock()
    tracker = KernelTracker(processes.is_running, rescan_after=30, clock=clock)
    assert tracker({kernel_id}) == {kernel_id}

    scans = []
    original = processes.kernel_processes
    monkeypatch.setattr(processes, "kernel_processes", lambda: scans.append(1) or original())
    assert tracker({kernel_id}) == {kernel_id}
    assert scans == []  # followed by pid, no scan

    process.kill()
    process.wait()
    assert tracker({kernel_id}) == set()
    assert scans == []  # it was looked for in the last scan, which is recent
    clock.now = 31
    assert tracker({kernel_id}) == set()
    assert scans == [1]  # a missing kernel is looked for again after rescan_after


def test_tracker_scans_for_an_id_it_never_looked_for(kernel):
    kernel_id, _ = kernel
    tracker = KernelTracker(processes.is_running, rescan_after=3600, clock=Clock())
    assert tracker({"not-a-kernel"}) == set()
    assert tracker({"not-a-kernel", kernel_id}) == {kernel_id}
