"""Several real Linux users sharing one state folder: what each may do to the others."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from genv.domain.models import Attachment, Environment, RegisteredProcess

from support import encode_records, start_of


@pytest.fixture
def users(linux_users, user_runtime, fake_machine):
    """alice and bob, with a genv they can run, on the simulated machine."""
    return linux_users


def only_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def refused(result) -> str:
    """A refusal: exit 1, nothing on stdout, one line on stderr that says permission."""
    assert result.rc == 1, result
    assert result.out == "", result
    assert "Traceback" not in result.err
    line = only_line(result.err)
    assert "permission" in line.lower(), line
    return line


def write_as(run_as, user, path, data: bytes, scratch) -> None:
    """Make ``path`` a file written by ``user`` (so owned by them) with ``data``."""
    source = scratch / f"payload-{os.urandom(4).hex()}"
    source.write_bytes(data)
    source.chmod(0o644)
    try:
        run_as(user, ["cp", source, path])
    finally:
        source.unlink()


def forged_state(uid: int, pid: int) -> bytes:
    started = time.time()
    env = Environment("forged", uid, None, started,
                      processes=(RegisteredProcess(pid, start_of(pid)),))
    return encode_records(uid, [env], [Attachment(0, "forged", uid, started)])


def test_no_user_creates_the_shared_folder(users, fake_machine, run_genv, new_env) -> None:
    """Whoever owns the folder can remove everyone's files: only root makes it."""
    alice, bob = users
    fake_machine.state_dir.rmdir()
    first = run_genv("envs", user=alice, umask=0o077)
    assert first.rc == 1
    line = only_line(first.err)
    assert "admin should create it" in line and "install -d -m 1777" in line
    assert not fake_machine.state_dir.exists()
    assert run_genv("envs").rc == 0  # root's first command makes it
    info = os.stat(fake_machine.state_dir)
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o1777, 0)
    new_env("eb", user=bob, name="bobs")
    new_env("ea", user=alice, name="alices")
    for user in users:
        path = fake_machine.state_file(user.uid)
        assert path.stat().st_uid == user.uid
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    for viewer in (alice, bob, None):
        result = run_genv("envs", "query", "--query", "eid", "uid", "username", user=viewer)
        assert result.rc == 0, result
        assert result.lines == [f"eb,{bob.uid},{bob.name}", f"ea,{alice.uid},{alice.name}"]
    assert run_genv("devices", "attach", "--eid", "ea", "--count", "1", user=alice).out == "0\n"
    assert run_genv("devices", "attach", "--eid", "eb", "--count", "1", user=bob).out == "1\n"


def test_other_users_cannot_touch_an_environment(users, fake_machine, run_genv, new_env,
                                                 sleeper) -> None:
    alice, bob = users
    alices = new_env("ea", user=alice, name="alices")
    assert run_genv("devices", "attach", "--eid", "ea", "--count", "1", user=alice).rc == 0
    alice_file = fake_machine.state_file(alice.uid)
    before = alice_file.read_bytes()
    bobs = sleeper(user=bob)
    attempts = [
        ("envs", "config", "--eid", "ea", "name", "--name", "mine"),
        ("envs", "config", "--eid", "ea", "gpus", "--count", "3"),
        ("envs", "config", "--eid", "ea", "gpu-memory", "--gpu-memory", "1g"),
        ("envs", "config", "--eid", "ea", "name", "--clear"),
        ("devices", "attach", "--eid", "ea", "--count", "2"),
        ("devices", "attach", "--eid", "ea", "--index", "1"),
        ("devices", "attach", "--eid", "ea", "--index", "0", "--allow-over-subscription"),
        ("devices", "detach", "--eid", "ea"),
        ("devices", "detach", "--eid", "ea", "--index", "0"),
        ("envs", "deactivate", "--pid", alices.pid),
        ("envs", "activate", "--eid", "eb", "--uid", alice.uid, "--pid", bobs.pid),
        ("envs", "activate", "--eid", "eb", "--uid", bob.uid, "--pid", alices.pid),
    ]
    for attempt in attempts:
        result = run_genv(*attempt, user=bob)
        assert result.rc != 0, attempt
        refused(result)
    # --reset only ever touches the caller's own environments
    assert run_genv("devices", "--reset", user=bob).rc == 0
    assert run_genv("envs", "--reset", user=bob).rc == 0
    assert alice_file.read_bytes() == before
    assert not fake_machine.state_file(bob.uid).exists()
    assert run_genv("envs", "query", "--query", "eid", "config.name").lines == ["ea,alices"]
    assert run_genv("devices", "find", "--eid", "ea", user=bob).out == "0\n"
    # ids are unique per owner: bob's own "ea" is another environment, alice's is untouched
    assert run_genv("envs", "activate", "--eid", "ea", "--uid", bob.uid, "--pid", bobs.pid,
                    user=bob).rc == 0
    assert run_genv("devices", "find", "--eid", "ea", user=bob).out == "\n"
    assert run_genv("devices", "find", "--eid", "ea", user=alice).out == "0\n"
    assert alice_file.read_bytes() == before


def test_root_may_change_a_users_environment(users, fake_machine, run_genv, new_env,
                                             sleeper) -> None:
    alice, _ = users
    alices = new_env("ea", user=alice)
    other = sleeper(user=alice)
    assert run_genv("envs", "config", "--eid", "ea", "name", "--name", "by-root").rc == 0
    assert run_genv("devices", "attach", "--eid", "ea", "--count", "2").out == "0,1\n"
    assert run_genv("devices", "detach", "--eid", "ea", "--index", "0").out == "1\n"
    created = run_genv("envs", "activate", "--eid", "er", "--uid", alice.uid,
                       "--username", alice.name, "--pid", other.pid)
    assert created.rc == 0, created
    path = fake_machine.state_file(alice.uid)
    assert path.stat().st_uid == alice.uid
    # root took device 0 back in its own file, without writing alice's
    assert fake_machine.read_state(0)["environments"] == []
    assert run_genv("devices", "find", "--eid", "ea", user=alice).out == "1\n"
    result = run_genv("envs", "query", "--query", "eid", "uid", "config.name", user=alice)
    assert result.lines == [f"ea,{alice.uid},by-root", f"er,{alice.uid},"]
    # the file is still alice's: she can go on changing it herself
    assert run_genv("envs", "config", "--eid", "ea", "name", "--name", "mine", user=alice).rc == 0
    assert run_genv("envs", "deactivate", "--pid", alices.pid).rc == 0
    assert run_genv("envs", "query", "--query", "eid", user=alice).lines == ["er"]


def test_a_state_file_planted_for_another_user_is_ignored(users, fake_machine, run_genv,
                                                          run_as, sleeper,
                                                          shared_tmp) -> None:
    alice, bob = users
    assert run_genv("envs").rc == 0  # root makes the folder
    alices = sleeper(user=alice)
    planted = fake_machine.state_file(bob.uid)
    write_as(run_as, alice, planted, forged_state(bob.uid, alices.pid), shared_tmp)
    assert planted.stat().st_uid == alice.uid
    for viewer in (bob, alice):  # (root would remove it at once)
        result = run_genv("envs", user=viewer)
        assert "forged" not in result.out
        assert "Traceback" not in result.err
        assert str(planted) in only_line(result.err)
        devices = run_genv("devices", "query", "--query", "index", "eids", user=viewer)
        assert "forged" not in devices.out
    # bob cannot remove a file alice owns in the sticky folder, but is not locked out:
    # his records go under a fallback name
    bobs = sleeper(user=bob)
    done = run_genv("envs", "activate", "--eid", "eb", "--uid", bob.uid, "--pid", bobs.pid,
                    user=bob)
    assert done.rc == 0, done
    fallback = fake_machine.state_dir / f"state-{bob.uid}~1.json"
    assert fallback.stat().st_uid == bob.uid
    result = run_genv("envs", "query", "--query", "eid", "uid", user=alice)
    assert result.lines == [f"eb,{bob.uid}"]
    # root removes what was planted, and bob's next write takes his own name back
    assert run_genv("envs").rc == 0
    assert not planted.exists()
    assert run_genv("envs", "config", "--eid", "eb", "name", "--name", "b", user=bob).rc == 0
    assert planted.stat().st_uid == bob.uid and not fallback.exists()
    result = run_genv("envs", "query", "--query", "eid", "uid", user=bob)
    assert (result.rc, result.lines, result.err) == (0, [f"eb,{bob.uid}"], "")


def test_records_claiming_another_uid_are_not_trusted(users, fake_machine, run_genv,
                                                      run_as, sleeper, shared_tmp) -> None:
    alice, bob = users
    assert run_genv("envs").rc == 0
    alices = sleeper(user=alice)
    own_file = fake_machine.state_file(alice.uid)
    write_as(run_as, alice, own_file, forged_state(bob.uid, alices.pid), shared_tmp)
    result = run_genv("envs", "query", "--query", "eid", "uid", user=bob)
    assert result.out == ""
    assert str(own_file) in only_line(result.err)


@pytest.mark.parametrize("target_exists", [True, False], ids=["existing", "dangling"])
@pytest.mark.parametrize("name", ["state-0.json", ".lock"])
def test_a_link_planted_by_a_user_does_not_redirect_root(users, fake_machine, run_genv,
                                                         run_as, sleeper, shared_tmp,
                                                         name: str,
                                                         target_exists: bool) -> None:
    alice, _ = users
    assert run_genv("envs").rc == 0  # root makes the folder (and no lock file yet)
    target = shared_tmp / "victim"
    if target_exists:
        target.write_text("precious\n")
        target.chmod(0o644)
    link = fake_machine.state_dir / name
    run_as(alice, ["ln", "-s", target, link])
    assert link.is_symlink()
    process = sleeper()
    result = run_genv("envs", "activate", "--eid", "r1", "--uid", "0", "--pid", process.pid)
    assert "Traceback" not in result.err
    if result.rc == 0:
        assert not fake_machine.state_file(0).is_symlink()
    else:
        assert name in only_line(result.err)
    attached = run_genv("devices", "attach", "--eid", "r1", "--count", "1")
    assert "Traceback" not in attached.err
    if target_exists:
        assert target.read_text() == "precious\n"
        assert target.stat().st_uid == 0
    else:
        assert not target.exists()
    listing = run_genv("envs")
    assert "Traceback" not in listing.err


def test_an_unreadable_state_file(users, fake_machine, run_genv, run_as, new_env) -> None:
    alice, bob = users
    new_env("ea", user=alice)
    new_env("eb", user=bob)
    bob_file = fake_machine.state_file(bob.uid)
    before = bob_file.read_bytes()
    alice_before = fake_machine.state_file(alice.uid).read_bytes()
    run_as(bob, ["chmod", "000", bob_file])
    # alice: a warning naming the file and what to do; her own work goes on
    seen = run_genv("envs", "query", "--query", "eid", user=alice)
    assert seen.rc == 0
    assert seen.lines == ["ea"]
    line = only_line(seen.err)
    assert str(bob_file) in line and "chmod" in line
    # bob may hold any device, for all alice can tell: none is given to her exclusively...
    held = run_genv("devices", "attach", "--eid", "ea", "--count", "1", user=alice)
    assert held.rc == 1 and "available" in held.err_lines[-1]
    # ...until root, who can read bob's file, says what bob holds (the daemon does, each cycle)
    assert run_genv("enforce", "--interval", "0").rc == 0
    assert run_genv("devices", "attach", "--eid", "ea", "--count", "1", user=alice).rc == 0
    # bob: his own state cannot be read, so his commands fail without writing anything
    mine = run_genv("envs", user=bob)
    assert mine.rc != 0
    assert str(bob_file) in only_line(mine.err)
    blocked = run_genv("devices", "attach", "--eid", "eb", "--count", "1", user=bob)
    assert blocked.rc == 1
    assert str(bob_file) in only_line(blocked.err)
    assert "Traceback" not in mine.err + blocked.err
    assert stat.S_IMODE(bob_file.stat().st_mode) == 0
    assert bob_file.read_bytes() == before
    # root reads everything
    everything = run_genv("envs", "query", "--query", "eid")
    assert (everything.rc, sorted(everything.lines)) == (0, ["ea", "eb"])
    assert fake_machine.state_file(alice.uid).read_bytes() != alice_before  # alice attached


def test_a_folder_others_could_swap_files_in_is_refused(users, fake_machine, run_genv,
                                                        run_as) -> None:
    alice, bob = users
    fake_machine.state_dir.rmdir()
    run_as(alice, ["mkdir", "-m", "0777", fake_machine.state_dir])
    result = run_genv("envs", user=bob)
    assert result.rc == 1
    assert "sticky" in only_line(result.err)
    # its owner repairs it; others are then warned that it is not root's
    assert run_genv("envs", user=alice).rc == 0
    assert stat.S_IMODE(os.stat(fake_machine.state_dir).st_mode) == 0o1777
    warned = run_genv("envs", user=bob)
    assert warned.rc == 0 and "sudo chown root:root" in only_line(warned.err)
    # root takes it over
    assert run_genv("envs").rc == 0
    assert os.stat(fake_machine.state_dir).st_uid == 0
    assert run_genv("envs", user=bob).err == ""


def test_state_files_stay_json(users, fake_machine, run_genv, new_env) -> None:
    alice, bob = users
    new_env("ea", user=alice)
    new_env("eb", user=bob)
    for user in users:
        data = json.loads(fake_machine.state_file(user.uid).read_bytes())
        assert data["uid"] == user.uid


def test_a_state_folder_the_user_cannot_create(users, run_genv, shared_tmp) -> None:
    alice, _ = users
    closed = shared_tmp / "closed"
    closed.mkdir(mode=0o755)
    result = run_genv("envs", user=alice, env={"GENV_TMPDIR": str(closed / "state")})
    assert result.rc == 1
    assert "Traceback" not in result.err
    line = only_line(result.err)
    assert str(closed / "state") in line and "GENV_TMPDIR" in line


def test_users_run_the_same_genv(users, user_runtime, run_genv, run_as) -> None:
    import genv

    alice, _ = users
    assert run_genv("version", user=alice).out == f"{genv.__version__}\n"
    script = run_as(alice, [user_runtime.bin_dir / "genv", "version"])
    assert script.stdout == f"{genv.__version__}\n"
