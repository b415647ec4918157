"""Faults a running daemon survives: its state folder removed and created again, or replaced;
a full disk. It notices, says so once, never takes what it cannot read for "no
environments", loses nothing and goes on enforcing."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from enforce_helpers import not_in_env, terminating

CYCLE = "DEBUG: cycle done"


def cycles(daemon) -> int:
    return daemon.stderr().count(CYCLE)


def wait_cycles(daemon, more: int, timeout: float = 20.0) -> None:
    """Until the daemon has finished ``more`` cycles from now."""
    target = cycles(daemon) + more
    daemon.wait_for(CYCLE, where="stderr", count=target, timeout=timeout)


def copy_folder(source: Path, target: Path) -> None:
    """A copy of the state folder (owners and modes kept): what an admin restores."""
    shutil.copytree(source, target, symlinks=True)
    for folder, _, files in os.walk(target):
        for name in files:
            original = os.lstat(Path(source, os.path.relpath(folder, target), name))
            os.lchown(Path(folder, name), original.st_uid, original.st_gid)
    target.chmod(0o1777)


def exchange(a: Path, b: Path) -> None:
    """Swap two folders in one step (renameat2 RENAME_EXCHANGE): a folder replaced, not
    removed for a moment."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange) != 0:
        error = ctypes.get_errno()
        pytest.skip(f"renameat2 RENAME_EXCHANGE: {os.strerror(error)}")


def test_state_folder_removed_and_created_again(genv, machine, procs, env_of, state_dir,
                                                shared_dir):
    shell = env_of("e1", attach=[0])
    member = procs.start(eid="e1")
    machine.add(member.pid, 0, "1gi")
    daemon = genv.start("--interval", "0.1", "--non-env-processes", "--grace", "1",
                        "--log-level", "debug")
    wait_cycles(daemon, 2)
    spare = shared_dir / "spare"
    copy_folder(state_dir, spare)

    remove_folder(state_dir)
    daemon.wait_for("was removed; waiting for it", where="stderr")
    wait_cycles(daemon, 5)

    # a dead folder is not "no environments": e1's process is left alone, nothing is made
    assert procs.alive(member)
    assert not_in_env(member.pid) not in daemon.stdout()
    assert not state_dir.exists()  # the daemon waits for it; it does not make it again
    assert "nothing done (state)" in daemon.stderr()

    os.rename(spare, state_dir)  # created again (a restored copy)
    daemon.wait_for("is back; reading it", where="stderr")
    wait_cycles(daemon, 3)
    assert procs.alive(member) and procs.alive(shell)
    assert daemon.stdout() == ""

    stray = procs.start()  # and it enforces again
    machine.add(stray.pid, 1, "1gi")
    daemon.wait_for(not_in_env(stray.pid))
    assert procs.wait_dead(stray)
    stderr = daemon.stderr()
    assert stderr.count("WARNING: cannot read the state") == 1  # once, not once per cycle
    assert stderr.count("resolved: cannot read the state") == 1
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr()


def test_state_folder_replaced(genv, machine, procs, env_of, state_dir, shared_dir):
    env_of("e1", attach=[0])
    member = procs.start(eid="e1")
    machine.add(member.pid, 0, "1gi")
    daemon = genv.start("--interval", "0.1", "--non-env-processes", "--grace", "1",
                        "--log-level", "debug")
    wait_cycles(daemon, 2)
    spare = shared_dir / "spare"
    copy_folder(state_dir, spare)

    exchange(spare, state_dir)
    daemon.wait_for("was replaced; reading the new one", where="stderr")
    wait_cycles(daemon, 3)

    assert procs.alive(member)
    assert daemon.stdout() == ""
    stray = procs.start()
    machine.add(stray.pid, 1, "1gi")
    daemon.wait_for(not_in_env(stray.pid))
    assert procs.wait_dead(stray)
    assert daemon.stderr().count("was replaced") == 1
    # and it reads the new folder: a change there is seen
    genv.run("devices", "detach", "--eid", "e1", "--index", "0")
    daemon.wait_for(f"Process {member.pid} from environment e1 is using non-attached GPU(s) 0")
    assert procs.wait_dead(member)
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr()


# -- a full disk -------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "256k"):
    """``path`` as a tmpfs of ``size`` (mode 1777), or the test is skipped where mounting is
    not allowed (no root, a container without CAP_SYS_ADMIN)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "tmpfs",
                           str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as file:
        for chunk in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    file.write(b"\0" * chunk)
    with pytest.raises(OSError) as caught, open(folder / "probe", "wb", buffering=0) as probe:
        probe.write(b"x")
    assert caught.value.errno == errno.ENOSPC
    os.unlink(folder / "probe")
    return filler


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, other users)")
def test_a_full_disk_is_one_line_loses_nothing_and_the_revocation_is_retried(
        genv, machine, procs, env_of, state_dir, alice):
    with small_tmpfs(state_dir):
        env_of("ae", user=alice, attach=[0, 1])
        member = procs.start(user=alice, eid="ae")
        machine.add(member.pid, 1, "1gi")  # device 0 holds no work of alice's: it goes
        files = {p.name: p.read_bytes() for p in state_dir.iterdir()}
        filler = fill(state_dir)

        daemon = genv.start("--interval", "0.1", "--max-devices-per-user", "1",
                            "--non-env-processes", "--grace", "1", "--log-level", "debug")
        daemon.wait_for("could not detach", where="stderr")
        wait_cycles(daemon, 5)
        stray = procs.start()  # the cycle goes on: enforcement too
        machine.add(stray.pid, 0, "1gi")
        daemon.wait_for(not_in_env(stray.pid))
        assert procs.wait_dead(stray)

        stderr = daemon.stderr()
        assert stderr.count("could not detach") == 1, stderr  # one line, however many cycles
        assert stderr.count("WARNING: ") == 2  # that, and root's note of who holds what
        assert "no space left on the device; nothing was changed" in stderr
        assert "Traceback" not in stderr
        lines = daemon.lines
        assert lines.count(f"User {alice.name} is using 2 devices which is 1 more than the "
                           "maximum allowed") == 1
        assert not [line for line in lines if line.startswith("Detaching")]  # not done
        assert {p.name: p.read_bytes() for p in state_dir.iterdir()
                if p.name in files} == files  # nothing lost, nothing half written
        assert procs.alive(member)

        filler.unlink()  # space again: the revocation goes through on a next cycle
        daemon.wait_for(f"Detaching environment ae of user {alice.name} from device 0")
        daemon.wait_for("resolved: could not detach", where="stderr")
        wait_cycles(daemon, 3)
        assert genv.attachments() == [("1", "ae")]
        assert daemon.stdout().count("Detaching") == 1
        assert terminating(member.pid, "ae", "1") not in daemon.lines
        assert procs.alive(member)
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.stderr()


def remove_folder(folder) -> None:
    """``rm -rf`` as an admin would: the daemon may write a file into the folder while it
    goes, so remove again until it is gone."""
    deadline = time.monotonic() + 10
    while folder.exists():
        assert time.monotonic() < deadline, f"{folder} could not be removed"
        shutil.rmtree(folder, ignore_errors=True)
