"""A state file that cannot be used: one clear line, no traceback, nothing else destroyed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from genv.domain.models import Environment

from support import encode_records

BYSTANDER = 40001  # a uid with no passwd entry whose (valid) file must survive untouched

CORRUPTIONS = {
    "truncated": b'{"version":1,"uid":0,"environments":[{"eid":"r1","usern',
    "garbage": b"\x00\xff\xfe\x81garbage\x9c\n\x00",
    "empty": b"",
    "newer-version": None,  # filled per uid below
    "unknown-version": None,
    "not-an-object": b"[1, 2, 3]",
    "directory": None,
}


def corrupt_bytes(kind: str, uid: int) -> bytes | None:
    if kind == "newer-version":
        return json.dumps({"version": 99, "uid": uid, "environments": [],
                           "attachments": []}).encode()
    if kind == "unknown-version":
        return json.dumps({"version": 0, "uid": uid, "envs": []}).encode()
    return CORRUPTIONS[kind]


def snapshot(path: Path) -> object:
    """Bytes of a file, or the listing of a folder: to check it was left as it was."""
    if path.is_dir():
        return ("dir", sorted(os.listdir(path)))
    return path.read_bytes()


def problem_line(result, path: Path) -> str:
    """Exactly one stderr line, naming ``path`` and saying how to recover; no traceback."""
    assert "Traceback" not in result.err + result.out
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result
    line = lines[0]
    assert str(path) in line, line
    assert any(word in line for word in ("mv ", "remove", "rm ", "chmod")), line
    return line


def write_bystander(state_dir: Path) -> Path:
    path = state_dir / f"state-{BYSTANDER}.json"
    path.write_bytes(encode_records(BYSTANDER, [Environment("gone", BYSTANDER, None, 1.0)], []))
    os.chown(path, BYSTANDER, -1)
    return path


def recover(path: Path) -> None:
    """What the message tells the owner to do."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.rename(path.with_name(path.name + ".bad"))


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_roots_own_corrupt_state(kind: str, fake_machine, run_genv, new_env, sleeper) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    env = new_env("r1", name="mine")
    assert run_genv("devices", "attach", "--eid", "r1", "--count", "1").rc == 0
    bystander = write_bystander(fake_machine.state_dir)
    bystander_bytes = bystander.read_bytes()
    path = fake_machine.state_file(0)
    path.unlink()
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(corrupt_bytes(kind, 0))
    before = snapshot(path)
    another = sleeper()

    for command in (["envs"], ["envs", "ps", "--format", "csv"], ["devices"],
                    ["devices", "ps", "--format", "json"], ["envs", "query", "--query", "eid"],
                    ["devices", "find", "--eid", "r1"]):
        result = run_genv(*command)
        assert result.rc != 0, (command, result)
        problem_line(result, path)
    listing = run_genv("devices")
    assert listing.lines[1:] == ["0", "1", "2", "3"]  # its attachments are not shown

    for command in (
        ["envs", "activate", "--eid", "r2", "--uid", "0", "--pid", str(another.pid)],
        ["envs", "activate", "--eid", "r1", "--uid", "0", "--pid", str(another.pid)],
        ["envs", "config", "--eid", "r1", "name", "--name", "x"],
        ["envs", "deactivate", "--pid", str(env.pid)],
        ["devices", "attach", "--eid", "r1", "--count", "2"],
        ["devices", "detach", "--eid", "r1"],
    ):
        result = run_genv(*command)
        assert result.rc == 1, (command, result)
        assert result.out == ""
        problem_line(result, path)
        assert snapshot(path) == before, command
    assert bystander.read_bytes() == bystander_bytes

    recover(path)
    assert run_genv("envs", "activate", "--eid", "r3", "--uid", "0",
                    "--pid", str(another.pid)).rc == 0
    result = run_genv("envs", "query", "--query", "eid")
    assert (result.rc, result.lines, result.err) == (0, ["r3"], "")


@pytest.fixture
def three_users(linux_users, user_runtime, fake_machine, new_env, run_genv):
    """alice, bob and root each with an environment; alice's holds device 0."""
    alice, bob = linux_users
    new_env("ea", user=alice)
    new_env("eb", user=bob)
    new_env("er")
    assert run_genv("devices", "attach", "--eid", "ea", "--index", "0", user=alice).rc == 0
    return linux_users


@pytest.mark.parametrize("kind", ["truncated", "garbage", "newer-version", "directory"])
def test_one_users_corrupt_state_spares_the_others(kind: str, three_users, fake_machine,
                                                   run_genv, run_as, sleeper,
                                                   shared_tmp) -> None:
    alice, bob = three_users
    path = fake_machine.state_file(alice.uid)
    run_as(alice, ["rm", path])
    if kind == "directory":
        run_as(alice, ["mkdir", path])
    else:
        payload = shared_tmp / "payload"
        payload.write_bytes(corrupt_bytes(kind, alice.uid))
        payload.chmod(0o644)
        run_as(alice, ["cp", payload, path])
        payload.unlink()
    assert path.stat().st_uid == alice.uid
    before = snapshot(path)
    root_file, bob_file = fake_machine.state_file(0), fake_machine.state_file(bob.uid)
    root_bytes = root_file.read_bytes()

    # alice: every command says what is wrong with her file, and changes nothing
    for command in (["envs"], ["devices"],
                    ["envs", "config", "--eid", "ea", "name", "--name", "x"],
                    ["devices", "attach", "--eid", "ea", "--count", "1"],
                    ["devices", "detach", "--eid", "ea"]):
        result = run_genv(*command, user=alice)
        assert result.rc != 0, (command, result)
        problem_line(result, path)
    alices = sleeper(user=alice)
    result = run_genv("envs", "activate", "--eid", "ea2", "--uid", str(alice.uid),
                      "--pid", str(alices.pid), user=alice)
    assert result.rc == 1
    problem_line(result, path)

    # bob: warned once, and his own work goes on
    seen = run_genv("envs", "query", "--query", "eid", user=bob)
    assert seen.rc == 0
    assert sorted(seen.lines) == ["eb", "er"]
    problem_line(seen, path)
    attached = run_genv("devices", "attach", "--eid", "eb", "--count", "1", user=bob)
    assert attached.rc == 0, attached
    assert run_genv("envs", "config", "--eid", "eb", "name", "--name", "b", user=bob).rc == 0
    assert root_file.read_bytes() == root_bytes

    # root: told (non-zero), still able to change its own and bob's environments
    listing = run_genv("envs")
    assert listing.rc != 0
    problem_line(listing, path)
    bob_bytes = bob_file.read_bytes()
    assert run_genv("envs", "config", "--eid", "er", "name", "--name", "r").rc == 0
    assert bob_file.read_bytes() == bob_bytes
    assert run_genv("envs", "config", "--eid", "eb", "gpus", "--count", "1").rc == 0
    blocked = run_genv("envs", "activate", "--eid", "ea3", "--uid", str(alice.uid),
                       "--pid", str(alices.pid))
    assert blocked.rc == 1
    problem_line(blocked, path)

    assert snapshot(path) == before
    assert json.loads(bob_file.read_bytes())["environments"][0]["config"]["gpus"] == 1
    assert json.loads(root_file.read_bytes())["environments"][0]["config"]["name"] == "r"


def test_a_link_in_place_of_the_state_folder(fake_machine, run_genv, shared_tmp) -> None:
    elsewhere = shared_tmp / "elsewhere"
    elsewhere.mkdir()
    fake_machine.state_dir.rmdir()
    fake_machine.state_dir.symlink_to(elsewhere)
    for command in (["envs"], ["devices"], ["envs", "activate", "--eid", "x", "--uid", "0",
                                            "--pid", str(os.getpid())]):
        result = run_genv(*command)
        assert result.rc == 1, result
        assert "Traceback" not in result.err
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and str(fake_machine.state_dir) in lines[0], result
    assert os.listdir(elsewhere) == []


def test_a_file_in_place_of_the_state_folder(fake_machine, run_genv) -> None:
    fake_machine.state_dir.rmdir()
    fake_machine.state_dir.write_text("not a folder")
    result = run_genv("envs")
    assert result.rc == 1
    assert "Traceback" not in result.err
    assert str(fake_machine.state_dir) in result.err
    assert fake_machine.state_dir.read_text() == "not a folder"
