"""One enforcing daemon per state folder: a second one refuses to start, in one line naming
the first; a --dry-run daemon and one-shot runs may run beside it; the lock is a root-only
pid file no user can open, and what a user planted under its name is removed by root."""

from __future__ import annotations

import os
import signal
import stat
import time

import pytest

from enforce_helpers import as_user, not_in_env

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the daemon's lock is root's")

PID_FILE = ".enforce-0.pid"


def started(daemon) -> None:
    daemon.wait_for("enforcing every", where="stderr")


def test_a_second_daemon_refuses_in_one_line_naming_the_first(genv, machine, procs, state_dir,
                                                              bob):
    first = genv.start("--interval", "0.2")  # the default rules: it leaves stray processes be
    started(first)

    second = genv.run("enforce", "--interval", "0.2", check=False)

    assert second.rc == 1
    assert second.stdout == ""
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith("genv: genv enforce is already running on the state folder "
                               f"{state_dir} (pid {first.process.pid}, ")
    # the lock: root's plain file, mode 0600, holding the pid; no user can even open it
    pid_file = state_dir / PID_FILE
    info = os.lstat(pid_file)
    assert stat.S_ISREG(info.st_mode) and info.st_uid == 0
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert pid_file.read_text() == f"{first.process.pid}\n"
    with pytest.raises(AssertionError, match="PermissionError"):
        as_user(bob, lambda: os.open(pid_file, os.O_RDONLY))

    # beside it: a dry-run daemon and a one-shot run
    dry = genv.start("--interval", "0.2", "--dry-run", "--non-env-processes")
    started(dry)
    stray = procs.start()
    machine.add(stray.pid, 0, "1gi")
    assert genv.enforce("--dry-run", "--non-env-processes").lines == [
        "[dry-run] " + not_in_env(stray.pid),
        f"[dry-run] Terminating process {stray.pid} from environment N/A that is running "
        "on GPU(s) 0",
    ]
    dry.wait_for("[dry-run] " + not_in_env(stray.pid))
    assert procs.alive(stray)
    assert genv.enforce("--non-env-processes", "--grace", "1").lines[0] == not_in_env(stray.pid)
    assert procs.wait_dead(stray)
    assert dry.stop() == 0
    assert first.running()

    # once the first has stopped, another may start
    assert first.stop(signal.SIGTERM) == 0
    third = genv.start("--interval", "0.2")
    started(third)
    assert pid_file.read_text() == f"{third.process.pid}\n"
    assert third.stop() == 0


def plant_link(path, precious):
    os.symlink(precious, path)


def plant_folder(path, precious):
    os.mkdir(path)
    (path / "inside").write_text("x")
    os.symlink(precious.parent, path / "link")
    os.symlink(precious, path / "file")


def plant_fifo(path, precious):
    os.mkfifo(path, 0o666)


def plant_file(path, precious):
    path.write_text("1\n")  # a pid file of bob's, naming init
    os.chmod(path, 0o644)


@pytest.mark.parametrize("plant", [plant_link, plant_folder, plant_fifo, plant_file],
                         ids=["link", "folder", "fifo", "file"])
def test_a_name_planted_by_a_user_is_removed_and_the_daemon_starts(genv, machine, procs,
                                                                   state_dir, shared_dir, bob,
                                                                   plant):
    precious = shared_dir / "precious"  # a file of root's
    precious.write_text("root's data\n")
    pid_file = state_dir / PID_FILE
    as_user(bob, lambda: plant(pid_file, precious))
    assert os.lstat(pid_file).st_uid == bob.uid

    daemon = genv.start("--interval", "0.2", "--non-env-processes", "--grace", "1")
    started(daemon)

    assert f"removed {pid_file}, planted by uid {bob.uid}" in daemon.stderr()
    info = os.lstat(pid_file)
    assert stat.S_ISREG(info.st_mode) and info.st_uid == 0 and info.st_nlink == 1
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert pid_file.read_text() == f"{daemon.process.pid}\n"
    assert precious.read_text() == "root's data\n"  # nothing followed
    assert sorted(p.name for p in shared_dir.iterdir() if p.name.startswith("prec")) == [
        "precious"]
    stray = procs.start()
    machine.add(stray.pid, 0, "1gi")
    daemon.wait_for(not_in_env(stray.pid))
    assert procs.wait_dead(stray)
    assert daemon.stop() == 0


def test_a_user_planting_the_name_again_and_again_cannot_keep_the_daemon_from_starting(
        genv, state_dir, bob):
    """Bob plants a link under the lock's name the moment it is free, in a loop: root's
    fresh file takes the name's place in one rename, so the name is never free for him."""
    import subprocess

    pid_file = state_dir / PID_FILE
    loop = (
        "import os, sys\n"
        "while True:\n"
        "    try:\n"
        "        os.symlink('/etc/passwd', sys.argv[1])\n"
        "    except OSError:\n"
        "        pass\n"
    )
    python = "/usr/bin/python3"  # one bob may run (the tests' own may be in root's home)
    if not os.access(python, os.X_OK):
        pytest.skip("no system python3 for the planting user")
    planter = subprocess.Popen([python, "-c", loop, str(pid_file)], preexec_fn=bob.become())
    try:
        for _ in range(50):  # the loop has planted it
            if os.path.islink(pid_file):
                break
            time.sleep(0.05)
        assert os.lstat(pid_file).st_uid == bob.uid
        daemon = genv.start("--interval", "0.2")
        started(daemon)
        info = os.lstat(pid_file)
        assert stat.S_ISREG(info.st_mode) and info.st_uid == 0
        assert pid_file.read_text() == f"{daemon.process.pid}\n"
        assert daemon.stop() == 0
    finally:
        planter.kill()
        planter.wait()


def test_a_hard_link_to_a_file_of_roots_is_never_written(genv, state_dir, shared_dir):
    """Where hard links to others' files are allowed (fs.protected_hardlinks=0), a user could
    link a file of root's under the lock's name: root must not truncate it."""
    precious = shared_dir / "precious"
    precious.write_text("root's data\n")
    os.link(precious, state_dir / PID_FILE)

    daemon = genv.start("--interval", "0.2")
    started(daemon)

    assert precious.read_text() == "root's data\n"
    assert os.lstat(state_dir / PID_FILE).st_ino != os.lstat(precious).st_ino
    assert daemon.stop() == 0
