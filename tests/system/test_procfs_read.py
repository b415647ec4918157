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


def test_a_name_with_parentheses_and_spaces_is_read_whole_and_misleads_nothing(tmp_path):
    """The command name is the process's own choice: ``) S 1 (`` in it must not shift the
    fields after it (state, start), and it is read as the process set it."""
    import shutil

    from genv.system.process_facts import read_facts

    program = tmp_path / ") Z 1 (x"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", program)
    child = subprocess.Popen([str(program), "60"])
    try:
        wait_environ(child.pid)
        stat = procfs.read_stat(child.pid)
        assert stat is not None and not stat.dead and stat.state in ("S", "R")
        assert stat.name == ") Z 1 (x"
        assert stat.start == procfs.start_of(child.pid)
        with open(f"/proc/{child.pid}/comm") as comm:
            assert comm.read().rstrip("\n") == stat.name
        facts = read_facts(child.pid)
        assert facts is not None and facts.name == ") Z 1 (x"
    finally:
        child.kill()
        child.wait()
