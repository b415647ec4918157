"""Switching a live server from genv 1.4.3: its state is taken over, nothing is lost, nothing
is killed, devices stay where they were.

genv 1.4.3 (the real one, from PyPI) makes the environments, run as the users who own them
where the machine lets a test user run its Python, with real processes of those users: two
shell-like environments with devices, a Jupyter kernel's environment, and one environment
whose record claims a user its process does not run as.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from genv.cli.migrate import NOT_TAKEN_OVER
from genv.domain.observation import Membership, ProcessFacts, resolve
from genv.store import Store

import peers
from support import wait_cmdline, wait_environ

STANDINS = peers.REPO / "standins"
COMMAND_TIMEOUT = 60
USER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _peer_site() -> Path:
    return next((peers.GENV_143 / "lib").glob("python3*/site-packages"))


@pytest.fixture
def peer(genv_143: Path, peer_env: dict[str, str], linux_users: Any) -> Any:
    """Run genv 1.4.3 as ``user``: through a Python the user may run when there is one of
    1.4.3's Python version (its own venv's lives where test users cannot go), else as root
    (as the integrations run its low-level commands; the processes are the users' all the
    same)."""
    version = _peer_site().parent.name  # python3.X
    system_python = shutil.which(version, path="/usr/bin:/usr/local/bin")

    def run(*args: str, user: Any = None) -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{STANDINS}:{USER_PATH}", "LANG": "C.UTF-8", "HOME": "/", **peer_env}
        if user is not None and system_python:
            code = "import sys; from genv.cli.__main__ import main; sys.argv[0] = 'genv'; main()"
            argv = [system_python, "-c", code, *args]
            env["PYTHONPATH"] = str(_peer_site())
            preexec = user.become()
        else:
            argv, preexec = [str(genv_143), *args], None
        result = subprocess.run(argv, env=env, preexec_fn=preexec, cwd="/", text=True,
                                capture_output=True, timeout=COMMAND_TIMEOUT, check=False)
        assert result.returncode == 0, (args, result.stderr)
        return result

    return run


def _kernel(sleeper: Any, user: Any) -> tuple[str, Any]:
    """A process of ``user`` whose command line names a kernel connection file, as Jupyter
    starts kernels."""
    kernel_id = str(uuid.uuid4())
    process = sleeper(user=user, argv=["sleep", "3600"])
    process.kill()
    process.wait()
    process = sleeper(user=user, argv=[f"/tmp/kernel-{kernel_id}.json", "3600"],
                      executable=shutil.which("sleep"))  # (the fixture stops it afterwards)
    wait_cmdline(process.pid, kernel_id)
    return kernel_id, process


def test_switching_from_143_loses_and_kills_nothing(
    fake_machine: Any, linux_users: Any, peer: Any, sleeper: Any, run_genv: Any,
) -> None:
    alice, bob = linux_users
    a1 = sleeper(user=alice, env={"GENV_ENVIRONMENT_ID": "a1"})
    b1 = sleeper(user=bob, env={"GENV_ENVIRONMENT_ID": "b1"})
    liar = sleeper(user=bob, env={"GENV_ENVIRONMENT_ID": "fake"})
    for process in (a1, b1, liar):
        wait_environ(process.pid)
    peer("envs", "activate", "--eid", "a1", "--uid", str(alice.uid), "--username", alice.name,
         "--pid", str(a1.pid), user=alice)
    peer("envs", "config", "--eid", "a1", "gpu-memory", "--gpu-memory", "8gi", user=alice)
    peer("envs", "config", "--eid", "a1", "name", "--name", "train", user=alice)
    assert peer("devices", "attach", "--eid", "a1", "--count", "1", user=alice).stdout == "0\n"
    peer("envs", "activate", "--eid", "b1", "--uid", str(bob.uid), "--username", bob.name,
         "--pid", str(b1.pid), user=bob)
    assert peer("devices", "attach", "--eid", "b1", "--count", "2", user=bob).stdout == "1,2\n"
    # bob writes a record that says it is alice's, with his own process in it
    peer("envs", "activate", "--eid", "fake", "--uid", str(alice.uid), "--pid", str(liar.pid),
         user=bob)
    # a Jupyter kernel of alice's, registered last (1.4.3 forgets kernels it cannot find)
    kernel_id, kernel = _kernel(sleeper, alice)
    peer("envs", "activate", "--eid", "k1", "--uid", str(alice.uid), "--kernel-id", kernel_id,
         user=alice)
    fake_machine.add_process(a1.pid, 0, "2gi")
    fake_machine.add_process(b1.pid, 1, "2gi")
    devices_before = json.loads((fake_machine.state_dir / "devices.json").read_text())

    # Before root ran: a user's command says once what the admin should run, and a
    # process in an environment of 1.4.3 is "could not tell", never "in no environment".
    listing = run_genv("envs", "ps", user=alice)
    assert listing.err_lines.count(f"genv: warning: {NOT_TAKEN_OVER}") == 1
    state = Store(caller_uid=alice.uid).read()
    assert {"a1", "b1", "fake", "k1"} <= state.legacy_eids
    facts = ProcessFacts(a1.pid, None, alice.uid, alice.name, "sleep", "a1")
    assert resolve(facts, state.environments, frozenset(), frozenset(),
                   state.legacy_eids)[0] is Membership.UNKNOWN
    # ... and what 1.4.3 gave stays given: alice's new environment gets device 3 only
    mine = sleeper(user=alice)
    assert run_genv("envs", "activate", "--eid", "new", "--uid", str(alice.uid), "--pid",
                    str(mine.pid), user=alice).rc == 0
    assert run_genv("devices", "attach", "--eid", "new", "--count", "2",
                    user=alice).rc == 1
    assert run_genv("devices", "attach", "--eid", "new", "--count", "1",
                    user=alice).lines == ["3"]
    # alice's own enforcement (she may terminate her own processes) leaves a1 alone
    own = run_genv("enforce", "--interval", "0", "--non-env-processes", "--grace", "1",
                   user=alice)
    assert f"Process {a1.pid} is not running" not in own.out
    assert a1.poll() is None

    # The switch: the first root command takes over, in one line.
    enforced = run_genv("enforce", "--interval", "0", "--non-env-processes", "--grace", "1")
    assert enforced.rc == 0, enforced.err
    taken = [line for line in enforced.err_lines if "took over" in line]
    assert len(taken) == 1 and taken[0].startswith(
        "genv: took over genv 1.4.3's state: 3 environments of 2 users (2 processes, "
        "1 kernels, 3 attachments), 0 ended ones dropped, 1 refused"
    ), enforced.err
    assert any("environment fake: it claims to be of" in line for line in enforced.err_lines)
    assert "Terminating" not in enforced.out, enforced.out
    for process in (a1, b1, kernel, liar, mine):
        assert process.poll() is None  # nothing killed

    rows = run_genv("envs", "ps", "--format", "csv", "--no-header", "--timestamp").lines
    by_eid = {row.split(",")[0]: row.split(",") for row in rows}
    assert by_eid["a1"][1:3] == [f"{alice.name}({alice.uid})", "train"]
    assert by_eid["a1"][4] == str(a1.pid)
    assert by_eid["b1"][1] == f"{bob.name}({bob.uid})" and by_eid["b1"][4] == str(b1.pid)
    assert by_eid["k1"][1] == str(alice.uid)  # made with --uid alone: the uid, as in 1.4.3
    assert "fake" not in by_eid
    creation = next(e for e in json.loads(
        (fake_machine.state_dir.glob("envs.json.1.4.3-*").__next__()).read_text())["envs"]
        if e["eid"] == "a1")["creation"]
    assert by_eid["a1"][3] == creation  # its creation time is kept
    assert run_genv("envs", "query", "--eid", "k1", "--query", "kernel_ids").lines == [kernel_id]
    assert run_genv("envs", "query", "--eid", "a1", "--query", "config.gpu_memory").lines == [
        "8gi"]
    devices = run_genv("devices", "ps", "--format", "csv", "--no-header", "--timestamp").lines
    assert [row.split(",")[:2] for row in devices] == [["0", "a1"], ["1", "b1"], ["2", "b1"],
                                                       ["3", "new"]]
    times = {att["time"] for d in devices_before["devices"] for att in d["attachments"]}
    assert {row.split(",")[3] for row in devices[:3]} <= times  # attached when they were

    # Each record is in its owner's own file; 1.4.3's files are kept aside; root's marker.
    assert (fake_machine.state_dir / f"state-{alice.uid}.json").stat().st_uid == alice.uid
    assert (fake_machine.state_dir / f"state-{bob.uid}.json").stat().st_uid == bob.uid
    assert not (fake_machine.state_dir / "envs.json").exists()
    assert len(list(fake_machine.state_dir.glob("devices.json.1.4.3-*"))) == 1
    # Twice changes nothing.
    files = {p.name: p.read_bytes() for p in fake_machine.state_dir.glob("state-*.json")}
    again = run_genv("migrate")
    assert again.rc == 0 and "already" in again.out
    assert files == {p.name: p.read_bytes() for p in fake_machine.state_dir.glob("state-*.json")}
    # A user's command no longer says anything about 1.4.3.
    assert "1.4.3" not in run_genv("envs", "ps", user=bob).err
    assert os.path.exists(f"/proc/{a1.pid}")


def test_files_of_143_made_after_root_ran_shield_nobody(
    fake_machine: Any, linux_users: Any, run_genv: Any, sleeper: Any,
) -> None:
    alice, _ = linux_users
    assert run_genv("envs", "ps").rc == 0  # root saw no 1.4.3 state: its marker says so
    (fake_machine.state_dir / "envs.json").write_text(json.dumps({"envs": [
        {"eid": "shield", "uid": alice.uid, "creation": "01/01/2026 00:00:00",
         "username": None, "config": {}, "pids": [], "kernel_ids": []}]}))
    state = Store(caller_uid=alice.uid).read()
    assert state.legacy_eids == frozenset()
    assert "1.4.3" not in run_genv("envs", "ps", user=alice).err
