"""/proc files are read whole (up to a limit), however a process makes its own large."""

from __future__ import annotations

import os
import subprocess

from genv.system import processes, procfs

from support import wait_environ


def test_a_claim_behind_a_large_environment_is_read():
    padding = {f"PAD{n}": "x" * 100_000 for n in range(4)}  # several reads before the claim
    child = subprocess.Popen(["sleep", "60"], env={**padding, "GENV_ENVIRONMENT_ID": "e7"})
    try:
        wait_environ(child.pid)
        assert processes.environment_claim(child.pid) == ("e7", True)
        assert procfs.real_uid(child.pid) == os.getuid()
        assert procfs.start_of(child.pid) is not None
    finally:
        child.kill()
        child.wait()


def test_read_proc_stops_at_its_limit():
    assert len(procfs.read_proc("/proc/self/environ", 10)) <= 10
    assert procfs.read_proc("/proc/self/stat").startswith(str(os.getpid()).encode())
