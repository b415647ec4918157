"""The store itself: files, modes, locks, liveness, planted names and who may change what.

Uids without a passwd entry (ALICE, BOB) stand for users here: root can own files as them
and run processes as them. The tests with real Linux users are in tests/cli.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from genv.domain.models import Attachment, Environment, RegisteredProcess, UserRecords
from genv.store import NotFound, PermissionRefused, StateError, Store, codec, safefs
from genv.system import procfs

from support import wait_cmdline


class LinuxUser:
    """A uid to run processes as (the sleeper fixture calls ``become``)."""

    def __init__(self, name: str, uid: int, gid: int) -> None:
        self.name, self.uid, self.gid = name, uid, gid

    def become(self, umask: int | None = None) -> Callable[[], None]:
        def preexec() -> None:
            os.setgroups([])
            os.setgid(self.gid)
            os.setuid(self.uid)

        return preexec


ALICE = 40001
BOB = 40002
AS_ALICE = LinuxUser("alice40001", ALICE, ALICE)
AS_BOB = LinuxUser("bob40002", BOB, BOB)

Sleeper = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture(autouse=True)
def _root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("these tests give files to other uids, which needs root")


@pytest.fixture
def state_dir(shared_tmp: Path) -> Path:
    return shared_tmp / "state"


def store(state_dir: Path, uid: int = 0) -> Store:
    return Store(state_dir, caller_uid=uid)


def kernel(sleeper: Sleeper, shared_tmp: Path, kernel_id: str,
           user: LinuxUser | None = None) -> subprocess.Popen[bytes]:
    """A process that looks like a Jupyter kernel (its connection file is on its command
    line): ``sleep`` itself, so that killing it leaves no child running."""
    connection = shared_tmp / f"kernel-{kernel_id}.json"
    process = sleeper(user=user, argv=[str(connection), "3600"], executable=shutil.which("sleep"))
    wait_cmdline(process.pid, kernel_id)
    return process


def write_records(state_dir: Path, uid: int, environments: list[Environment],
                  attachments: list[Attachment] | None = None, name: str | None = None) -> Path:
    state_dir.mkdir(mode=0o1777, exist_ok=True)
    os.chmod(state_dir, 0o1777)
    path = state_dir / (name or f"state-{uid}.json")
    records = UserRecords(uid, tuple(environments), tuple(attachments or ()))
    path.write_bytes(codec.encode(records, procfs.boot_id()))
    os.chown(path, uid, -1)
    path.chmod(0o644)
    return path


def env_of(uid: int, eid: str, *processes: subprocess.Popen[bytes]) -> Environment:
    return Environment(eid, uid, None, time.time(), processes=tuple(
        RegisteredProcess(p.pid, procfs.start_of(p.pid)) for p in processes))


# -- files and modes -------------------------------------------------------------------------


def test_first_write_makes_the_folder_a_file_and_a_private_lock(state_dir: Path,
                                                                sleeper: Sleeper) -> None:
    process = sleeper()
    with store(state_dir).transaction() as tx:
        tx.activate("e1", pid=process.pid)
    info = os.stat(state_dir)
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o1777, 0)
    path = state_dir / "state-0.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((state_dir / ".lock-0").stat().st_mode) == 0o600
    data = json.loads(path.read_bytes())
    assert (data["version"], data["boot_id"]) == (codec.FORMAT_VERSION, procfs.boot_id())
    [env] = store(state_dir).read().environments
    assert (env.eid, env.pids) == ("e1", (process.pid,))
    assert env.processes[0].start == procfs.start_of(process.pid)
    # (and root's word that genv 1.4.3 left nothing here: see test_legacy.py)
    assert sorted(os.listdir(state_dir)) == [".genv-1.4.3-taken-over", ".lock-0", "state-0.json"]


def test_root_writes_a_users_file_and_lock_owned_by_that_user(state_dir: Path, sleeper: Sleeper,
                                                              shared_tmp: Path) -> None:
    kernel(sleeper, shared_tmp, "k1", user=AS_ALICE)
    with store(state_dir).transaction(uid=ALICE) as tx:
        tx.activate("ea", kernel_id="k1")
    assert (state_dir / f"state-{ALICE}.json").stat().st_uid == ALICE
    lock = (state_dir / f".lock-{ALICE}").stat()
    assert (lock.st_uid, stat.S_IMODE(lock.st_mode)) == (ALICE, 0o600)
    [env] = store(state_dir).read().environments
    assert (env.uid, env.kernel_ids) == (ALICE, ("k1",))


def test_nothing_is_saved_when_the_block_raises(state_dir: Path, sleeper: Sleeper) -> None:
    process = sleeper()
    with store(state_dir).transaction() as tx:
        tx.activate("e1", pid=process.pid)
    before = (state_dir / "state-0.json").read_bytes()
    with pytest.raises(RuntimeError), store(state_dir).transaction() as tx:
        tx.configure("e1", name="changed")
        raise RuntimeError("boom")
    assert (state_dir / "state-0.json").read_bytes() == before
    assert not [name for name in os.listdir(state_dir) if name.endswith(".tmp")]


def test_configure_changes_and_clears(state_dir: Path, sleeper: Sleeper) -> None:
    process = sleeper()
    with store(state_dir).transaction() as tx:
        tx.activate("e1", pid=process.pid)
        tx.attach("e1", 0)
        tx.configure("e1", name="n", gpus=2, gpu_memory="4g")
    state = store(state_dir).read()
    assert (state.environments[0].config.name, state.environments[0].config.gpus) == ("n", 2)
    assert state.attachments[0].gpu_memory == "4g"  # capacity follows onto attachments
    with store(state_dir).transaction() as tx:
        tx.configure("e1", name=None, gpu_memory=None)
    config = store(state_dir).read().environments[0].config
    assert (config.name, config.gpus, config.gpu_memory) == (None, 2, None)


def test_values_are_checked_where_they_are_written(state_dir: Path, sleeper: Sleeper) -> None:
    process = sleeper()
    with store(state_dir).transaction() as tx:
        tx.activate("e1", pid=process.pid)
    for change in ({"name": "a\nb"}, {"name": "x,y"}, {"gpus": -1}, {"gpu_memory": "lots"}):
        with pytest.raises(Exception, match="invalid|cannot|not allowed|negative"), \
                store(state_dir).transaction() as tx:
            tx.configure("e1", **change)
    with pytest.raises(Exception, match="environment id"), store(state_dir).transaction() as tx:
        tx.activate("bad id", pid=process.pid)


def test_unknown_environment_is_not_found(state_dir: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"), store(state_dir).transaction() as tx:
        tx.configure("nope", name="x")


def test_a_full_disk_changes_nothing(shared_tmp: Path, sleeper: Sleeper) -> None:
    disk = shared_tmp / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k,mode=1777", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        state_dir = disk / "state"
        first = sleeper()
        with store(state_dir).transaction() as tx:
            tx.activate("e1", pid=first.pid)
        before = (state_dir / "state-0.json").read_bytes()
        filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with pytest.raises(OSError):
                while True:
                    os.write(filler, b"\0" * 4096)
        finally:
            os.close(filler)
        with pytest.raises(StateError, match="no space left") as caught, \
                store(state_dir).transaction() as tx:
            tx.configure("e1", name="x" * 100)
            for number in range(200):
                tx.activate(f"more{number}", pid=first.pid)
        assert "\n" not in str(caught.value)
        assert (state_dir / "state-0.json").read_bytes() == before
        assert not [n for n in os.listdir(state_dir) if n.endswith(".tmp")]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# -- the per-user lock -----------------------------------------------------------------------


def test_a_users_lock_held_elsewhere_times_out(state_dir: Path) -> None:
    with store(state_dir, ALICE).transaction():
        pass  # makes the lock
    fd = os.open(state_dir / f".lock-{ALICE}", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(StateError, match="another command"), \
                store(state_dir, ALICE).transaction(timeout=0.3):
            pass
        assert time.monotonic() - started < 2
        # other users (and root for itself) are not held up by alice's lock
        with store(state_dir, BOB).transaction(timeout=0.3):
            pass
        with store(state_dir).transaction(timeout=0.3):
            pass
    finally:
        os.close(fd)


def test_no_other_user_can_open_a_users_lock(state_dir: Path, run_as_uid: Callable) -> None:
    with store(state_dir, ALICE).transaction():
        pass
    result = run_as_uid(BOB, f"open({str(state_dir / f'.lock-{ALICE}')!r})")
    assert "PermissionError" in result.stderr


def test_two_transactions_of_one_user_take_turns(state_dir: Path, sleeper: Sleeper) -> None:
    process = sleeper(user=AS_ALICE)
    with store(state_dir, ALICE).transaction() as tx:
        tx.activate("e", pid=process.pid)
    errors: list[BaseException] = []

    def add(number: int) -> None:
        try:
            with store(state_dir, ALICE).transaction() as tx:
                tx.configure("e", gpus=number)
                tx.attach("e", number)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=add, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(a.device_index for a in store(state_dir).read().attachments) == list(range(8))


# -- planted names ---------------------------------------------------------------------------


def test_a_planted_state_name_does_not_lock_its_owner_out(state_dir: Path, sleeper: Sleeper,
                                                           run_as_uid: Callable) -> None:
    process = sleeper(user=AS_ALICE)
    forged = write_records(state_dir, BOB, [env_of(BOB, "forged", process)],
                           name=f"state-{ALICE}.json")
    state = store(state_dir, ALICE).read()
    assert state.environments == ()
    assert state.problems and state.problems[0].uid is None  # concerns nobody
    with store(state_dir, ALICE).transaction() as tx:  # alice writes under a fallback name
        tx.activate("ea", pid=process.pid)
    assert forged.stat().st_uid == BOB
    assert (state_dir / f"state-{ALICE}~1.json").stat().st_uid == ALICE
    assert [e.eid for e in store(state_dir, BOB).read().environments] == ["ea"]
    # root removes the planted file; alice's next write goes back to the canonical name
    Store(state_dir).read()
    assert not forged.exists()
    with store(state_dir, ALICE).transaction() as tx:
        tx.configure("ea", name="back")
    assert (state_dir / f"state-{ALICE}.json").stat().st_uid == ALICE
    assert not (state_dir / f"state-{ALICE}~1.json").exists()
    assert [e.config.name for e in store(state_dir).read().environments] == ["back"]


def test_a_planted_lock_name_does_not_lock_its_owner_out(state_dir: Path,
                                                          sleeper: Sleeper) -> None:
    state_dir.mkdir(mode=0o1777)
    os.chmod(state_dir, 0o1777)
    planted = state_dir / f".lock-{ALICE}"
    planted.write_text("")
    os.chown(planted, BOB, -1)
    planted.chmod(0o644)
    fd = os.open(planted, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # bob holds it forever
    try:
        process = sleeper(user=AS_ALICE)
        started = time.monotonic()
        with store(state_dir, ALICE).transaction(timeout=5) as tx:
            tx.activate("ea", pid=process.pid)
        assert time.monotonic() - started < 1
        assert (state_dir / f".lock-{ALICE}~1").stat().st_uid == ALICE
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["link", "folder", "fifo"])
def test_planted_names_are_never_followed_and_root_removes_them(
    state_dir: Path, sleeper: Sleeper, shared_tmp: Path, kind: str,
) -> None:
    state_dir.mkdir(mode=0o1777)
    os.chmod(state_dir, 0o1777)
    victim = shared_tmp / "victim"
    victim.write_text("precious\n")
    planted = state_dir / f"state-{ALICE}.json"
    if kind == "link":
        planted.symlink_to(victim)
    elif kind == "folder":
        planted.mkdir()
        (planted / "inside").symlink_to(victim)
    else:
        os.mkfifo(planted)
    os.chown(planted, BOB, -1, follow_symlinks=False)
    process = sleeper(user=AS_ALICE)
    with store(state_dir, ALICE).transaction(timeout=5) as tx:
        tx.activate("ea", pid=process.pid)
    assert victim.read_text() == "precious\n"
    assert [e.eid for e in store(state_dir, ALICE).read().environments] == ["ea"]
    Store(state_dir).read()  # root's pass removes what was planted
    assert not os.path.lexists(planted)
    assert victim.read_text() == "precious\n"


def test_only_canonical_file_names_count(state_dir: Path, sleeper: Sleeper) -> None:
    process = sleeper()
    path = write_records(state_dir, 0, [env_of(0, "padded", process)])
    path.rename(state_dir / "state-00.json")
    os.chown(state_dir / "state-00.json", ALICE, -1)
    state = store(state_dir).read()
    assert state.environments == ()
    with store(state_dir).transaction() as tx:  # root is not blocked by it
        tx.activate("e1", pid=process.pid)


# -- bad files -------------------------------------------------------------------------------


def test_a_corrupt_file_concerns_only_its_owner_and_is_never_overwritten(
    state_dir: Path, sleeper: Sleeper,
) -> None:
    state_dir.mkdir(mode=0o1777)
    os.chmod(state_dir, 0o1777)
    corrupt = state_dir / f"state-{ALICE}.json"
    corrupt.write_bytes(b'{"version": 2, "uid": 40001, "environ')
    os.chown(corrupt, ALICE, -1)
    process, bobs = sleeper(), sleeper(user=AS_BOB)
    with store(state_dir).transaction() as tx:
        tx.activate("e1", pid=process.pid)
    with store(state_dir, BOB).transaction() as tx:
        tx.activate("eb", pid=bobs.pid)
    state = store(state_dir).read()
    assert sorted(e.eid for e in state.environments) == ["e1", "eb"]
    [problem] = state.problems
    assert (problem.uid, problem.owner_fault) == (ALICE, True)
    with pytest.raises(StateError, match=str(corrupt)), \
            store(state_dir, ALICE).transaction() as tx:
        tx.activate("ea", pid=sleeper(user=AS_ALICE).pid)
    assert corrupt.read_bytes() == b'{"version": 2, "uid": 40001, "environ'


@pytest.mark.parametrize("error", [errno.EIO, errno.EACCES], ids=["io-error", "denied"])
def test_a_file_that_cannot_be_read_is_never_overwritten(
    state_dir: Path, sleeper: Sleeper, monkeypatch: pytest.MonkeyPatch, error: int,
) -> None:
    """Whether the disk failed (unknown records) or the reader may not read it (hidden
    records), saving a change would replace the records nobody read with an empty set."""
    path = write_records(state_dir, ALICE, [env_of(ALICE, "ea", sleeper(user=AS_ALICE))])
    before = path.read_bytes()
    read_file = safefs.read_file

    def failing(dir_fd: int, name: str, limit: int):  # noqa: ANN202
        if name == path.name:
            raise OSError(error, os.strerror(error))
        return read_file(dir_fd, name, limit)

    monkeypatch.setattr(safefs, "read_file", failing)
    for caller in (0, ALICE):
        with pytest.raises(StateError, match=f"nothing was changed: state file {path}"), \
                store(state_dir, caller).transaction(uid=ALICE) as tx:
            tx.activate("eb", pid=sleeper(user=AS_ALICE).pid)
    assert path.read_bytes() == before
    with store(state_dir).transaction() as tx:  # nobody else is held up
        tx.activate("e0", pid=sleeper().pid)
    assert path.read_bytes() == before


def test_a_file_whose_records_were_not_read_is_never_overwritten(
    state_dir: Path, sleeper: Sleeper, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second guard: a file was there but its records did not reach the transaction,
    with no problem said about it (whatever the cause); the save refuses all the same."""
    path = write_records(state_dir, ALICE, [env_of(ALICE, "ea", sleeper(user=AS_ALICE))])
    before = path.read_bytes()
    reader = store(state_dir)
    load = reader.loader.load

    def losing_alices_records(dir_fd: int, only=None):  # noqa: ANN001, ANN202
        loaded = load(dir_fd, only)
        loaded.records.pop(ALICE, None)
        return loaded

    monkeypatch.setattr(reader.loader, "load", losing_alices_records)
    with pytest.raises(StateError, match=f"the state file of uid {ALICE} could not be read"), \
            reader.transaction(uid=ALICE) as tx:
        tx.activate("eb", pid=sleeper(user=AS_ALICE).pid)
    assert path.read_bytes() == before


def test_a_file_others_can_write_is_not_trusted(state_dir: Path, sleeper: Sleeper) -> None:
    process = sleeper(user=AS_ALICE)
    path = write_records(state_dir, ALICE, [env_of(ALICE, "ea", process)])
    path.chmod(0o666)
    state = store(state_dir).read()
    assert state.environments == ()
    assert "chmod 644" in state.problems[0].line()


def test_a_huge_file_is_not_read(state_dir: Path) -> None:
    state_dir.mkdir(mode=0o1777)
    os.chmod(state_dir, 0o1777)
    path = state_dir / f"state-{ALICE}.json"
    with open(path, "wb") as file:
        file.truncate(100 * 1024 * 1024)  # 100 MB, sparse
    os.chown(path, ALICE, -1)
    started = time.monotonic()
    state = store(state_dir).read()
    assert time.monotonic() - started < 1
    assert "larger than" in state.problems[0].line()


# -- liveness --------------------------------------------------------------------------------


def test_environment_ends_with_its_last_process(state_dir: Path, sleeper: Sleeper) -> None:
    first, second = sleeper(), sleeper()
    with store(state_dir).transaction() as tx:
        tx.activate("e1", pid=first.pid)
        tx.activate("e1", pid=second.pid)
        tx.attach("e1", 1)
        tx.attach("e1", 2)
    first.kill()
    first.wait()
    [env] = store(state_dir).read().environments
    assert env.pids == (second.pid,)
    second.kill()
    second.wait()
    state = store(state_dir).read()
    assert (state.environments, state.attachments) == ((), ())


def test_a_reused_pid_keeps_nothing_alive(state_dir: Path, sleeper: Sleeper) -> None:
    process = sleeper()
    start = procfs.start_of(process.pid)
    assert start is not None
    write_records(state_dir, 0, [
        Environment("reused", 0, None, 1.0, processes=(RegisteredProcess(process.pid, start - 5),)),
        Environment("unknown", 0, None, 1.0, processes=(RegisteredProcess(process.pid, None),)),
        Environment("same", 0, None, 1.0, processes=(RegisteredProcess(process.pid, start),)),
    ], [Attachment(0, "reused", 0, 1.0), Attachment(1, "same", 0, 1.0)])
    state = store(state_dir).read()
    assert [e.eid for e in state.environments] == ["same"]
    assert [(a.device_index, a.eid) for a in state.attachments] == [(1, "same")]


def test_another_users_process_keeps_no_environment_alive(state_dir: Path,
                                                          sleeper: Sleeper) -> None:
    bobs = sleeper(user=AS_BOB)
    write_records(state_dir, ALICE, [env_of(ALICE, "ea", bobs)])
    assert store(state_dir).read().environments == ()
    with pytest.raises(PermissionRefused, match="another user"), \
            store(state_dir).transaction(uid=ALICE) as tx:
        tx.activate("ea", pid=bobs.pid)


def test_a_clock_step_keeps_environments_alive(state_dir: Path, sleeper: Sleeper) -> None:
    """Starts are ticks since boot: what the wall clock says does not enter into it."""
    process = sleeper()
    with store(state_dir).transaction() as tx:
        tx.activate("e1", pid=process.pid)
    data = json.loads((state_dir / "state-0.json").read_bytes())
    data["environments"][0]["creation"] -= 10 * 365 * 86400  # as if the clock had jumped
    (state_dir / "state-0.json").write_text(json.dumps(data))
    assert [e.eid for e in store(state_dir).read().environments] == ["e1"]


def test_a_kernel_environment_lives_while_its_owners_kernel_runs(
    state_dir: Path, sleeper: Sleeper, shared_tmp: Path,
) -> None:
    impostor = kernel(sleeper, shared_tmp, "abc-123", user=AS_BOB)
    with store(state_dir).transaction(uid=ALICE) as tx:
        tx.activate("k", kernel_id="abc-123")
    assert store(state_dir).read().environments == ()  # bob's "kernel" keeps nothing alive
    process = kernel(sleeper, shared_tmp, "abc-123", user=AS_ALICE)
    with store(state_dir).transaction(uid=ALICE) as tx:
        tx.activate("k", kernel_id="abc-123")
    assert [e.kernel_ids for e in store(state_dir).read().environments] == [("abc-123",)]
    process.kill()
    process.wait()
    assert store(state_dir).read().environments == ()
    impostor.kill()


# -- who may change what ---------------------------------------------------------------------


def test_users_may_not_change_others_records(state_dir: Path, sleeper: Sleeper) -> None:
    process = sleeper(user=AS_ALICE)
    with store(state_dir, ALICE).transaction() as tx:
        tx.activate("ea", pid=process.pid)
    before = (state_dir / f"state-{ALICE}.json").read_bytes()
    with pytest.raises(PermissionRefused, match="permission"), \
            store(state_dir, BOB).transaction(uid=ALICE):
        pass
    with pytest.raises(PermissionRefused), store(state_dir, BOB).transaction() as tx:
        tx.revoke(environments=list(store(state_dir).read().environments))
    assert (state_dir / f"state-{ALICE}.json").read_bytes() == before


def test_ids_are_unique_per_owner(state_dir: Path, sleeper: Sleeper) -> None:
    """Nobody can squat another user's next default id (a shell's pid)."""
    alices, bobs = sleeper(user=AS_ALICE), sleeper(user=AS_BOB)
    with store(state_dir, BOB).transaction() as tx:
        tx.activate(str(alices.pid), pid=bobs.pid)
    with store(state_dir, ALICE).transaction() as tx:
        tx.activate(str(alices.pid), pid=alices.pid)
    assert sorted(e.uid for e in store(state_dir).read().environments) == [ALICE, BOB]


def test_root_revokes_without_touching_the_users_file(state_dir: Path, sleeper: Sleeper) -> None:
    process = sleeper(user=AS_ALICE)
    with store(state_dir, ALICE).transaction() as tx:
        tx.activate("ea", pid=process.pid)
        tx.attach("ea", 0)
        tx.attach("ea", 1)
    before = (state_dir / f"state-{ALICE}.json").read_bytes()
    state = store(state_dir).read()
    with store(state_dir).transaction() as tx:
        tx.revoke(attachments=[a for a in state.attachments if a.device_index == 1])
    assert (state_dir / f"state-{ALICE}.json").read_bytes() == before
    assert [a.device_index for a in store(state_dir, ALICE).read().attachments] == [0]
    with store(state_dir, ALICE).transaction() as tx:  # alice's next write drops it
        tx.configure("ea", name="n")
    assert len(json.loads((state_dir / f"state-{ALICE}.json").read_bytes())["attachments"]) == 1
    with store(state_dir).transaction() as tx:  # and root's next write forgets the revocation
        tx.revoke()
    assert "revoked" not in json.loads((state_dir / "state-0.json").read_bytes())
    # attaching again later is not revoked
    with store(state_dir, ALICE).transaction() as tx:
        tx.attach("ea", 1)
    assert [a.device_index for a in store(state_dir).read().attachments] == [0, 1]


def test_a_removed_folder_is_never_read_as_empty(state_dir: Path, sleeper: Sleeper) -> None:
    process = sleeper()
    reader = store(state_dir)
    with reader.transaction() as tx:
        tx.activate("e1", pid=process.pid)
    assert [e.eid for e in reader.read().environments] == ["e1"]
    moved = state_dir.with_name("moved")
    state_dir.rename(moved)
    with pytest.raises(StateError, match="removed"):
        reader.read()
    moved.rename(state_dir)
    assert [e.eid for e in reader.read().environments] == ["e1"]


def test_a_users_folder_in_a_shared_place_is_made_by_root_only(
    shared_tmp: Path, run_as_uid: Callable,
) -> None:
    target = shared_tmp / "fresh"
    result = run_as_uid(ALICE, f"from genv.store import Store; Store({str(target)!r}).read()")
    assert "an admin should create it" in result.stderr
    assert not target.exists()


def test_a_world_writable_folder_is_taken_over_by_root(state_dir: Path) -> None:
    state_dir.mkdir()
    os.chmod(state_dir, 0o777)
    os.chown(state_dir, ALICE, -1)
    store(state_dir).read()
    info = os.stat(state_dir)
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o1777)


def test_write_errors_are_one_line(shared_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fd = os.open(shared_tmp, os.O_RDONLY | os.O_DIRECTORY)

    def full(*_: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    try:
        with pytest.raises(StateError, match="no space left") as caught:
            safefs.write_atomic(fd, "x.json", b"{}", 0, "x.json")
    finally:
        monkeypatch.undo()
        os.close(fd)
    assert "\n" not in str(caught.value)
    assert not [n for n in os.listdir(shared_tmp) if n.endswith(".tmp")]


def test_a_reader_with_a_watcher_works_liveness_out_again_only_on_change(
    state_dir: Path, sleeper: Sleeper, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon's store follows registered processes by pidfd: an unchanged folder and no
    exit means the same live state (no /proc read), and an exit or a write is seen at once."""
    from genv.store import loader
    from genv.system.watch import ProcessWatcher

    first, second = sleeper(), sleeper()
    with store(state_dir).transaction() as tx:
        tx.activate("e1", pid=first.pid)
        tx.activate("e2", pid=second.pid)
    time.sleep(loader.SETTLED_SECONDS + 0.1)  # decoded records are kept once the file settled
    watcher = ProcessWatcher()
    reader = Store(state_dir, watcher=watcher)
    state = reader.read()
    assert sorted(e.eid for e in state.environments) == ["e1", "e2"]
    reads = []
    real = procfs.start_of
    monkeypatch.setattr(procfs, "start_of", lambda pid: reads.append(pid) or real(pid))
    assert reader.read() is state and reads == []  # nothing changed: nothing read
    first.kill()
    first.wait()
    assert [e.eid for e in reader.read().environments] == ["e2"]  # the exit is seen at once
    with store(state_dir).transaction() as tx:
        tx.configure("e2", name="renamed")
    assert [e.config.name for e in reader.read().environments] == ["renamed"]
    watcher.close()


def test_a_file_rewritten_in_place_within_one_tick_of_the_clock_is_read_again(
    state_dir: Path, sleeper: Sleeper, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where file times have the coarse clock's resolution, a rewrite in place of the same
    size within one tick leaves the whole status as it was: records decoded from a file that
    changed that recently are not kept, so the daemon never holds on to what its owner had
    written a moment before (and others no longer see)."""
    from genv.store import loader

    process = sleeper()
    with store(state_dir).transaction() as tx:
        tx.activate("e1", pid=process.pid)
    path = state_dir / "state-0.json"
    before = path.read_bytes()
    assert b'"e1"' in before
    # A coarse clock: the status says nothing of a change (size, times, inode all alike).
    monkeypatch.setattr(loader, "_key", lambda info: (info.st_dev, info.st_ino, info.st_size,
                                                      info.st_uid, info.st_mode, info.st_nlink))
    reader = Store(state_dir)
    assert [e.eid for e in reader.read().environments] == ["e1"]
    after = before.replace(b'"e1"', b'"e2"')
    assert len(after) == len(before)
    with open(path, "r+b") as rewrite:  # in place: same inode, same size
        rewrite.write(after)
    assert [e.eid for e in reader.read().environments] == ["e2"]


# -- found in review: each once a way for one user to hurt another -------------------------


def test_another_users_renames_never_make_a_users_file_missed(state_dir: Path,
                                                             sleeper: Sleeper) -> None:
    """Names appearing and vanishing all the time (bob renaming his own files under other
    uids' names) must never make root miss alice's file, nor let her writes lose records."""
    process = sleeper(user=AS_ALICE)
    with store(state_dir, ALICE).transaction() as tx:
        for number in range(5):
            tx.activate(f"ea{number}", pid=process.pid)
    stop = threading.Event()
    names_ = [f"state-{uid}.json" for uid in range(1000, 1064)]

    def churn() -> None:
        files = [state_dir / name for name in names_]
        for path in files:
            path.write_text("x")
            os.chown(path, BOB, -1)
        while not stop.is_set():
            for path in files:
                with contextlib.suppress(FileNotFoundError):  # root may free the name
                    os.rename(path, path.with_suffix(".hidden"))
                    os.rename(path.with_suffix(".hidden"), path)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        reader = Store(state_dir)
        for _ in range(150):
            assert len([e for e in reader.read().environments if e.uid == ALICE]) == 5
        with store(state_dir, ALICE).transaction() as tx:
            tx.activate("ea5", pid=process.pid)
    finally:
        stop.set()
        thread.join()
    assert len(store(state_dir).read().environments) == 6


def _deep_folder(at: Path, depth: int) -> None:
    """A folder ``depth`` levels deep, made without recursion (deeper than Python's limit)."""
    os.mkdir(at)
    fd = os.open(at, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)


def test_a_deep_planted_folder_costs_root_one_rename(state_dir: Path, sleeper: Sleeper) -> None:
    state_dir.mkdir(mode=0o1777)
    os.chmod(state_dir, 0o1777)
    _deep_folder(state_dir / "deep", 1500)  # deeper than Python's recursion limit
    os.chown(state_dir / "deep", BOB, -1)  # planted by bob
    os.rename(state_dir / "deep", state_dir / f"state-{ALICE}.json")
    try:
        started = time.monotonic()
        state = Store(state_dir).read()  # root: frees the name, in one rename
        assert time.monotonic() - started < 1
        assert state.environments == ()
        assert not os.path.lexists(state_dir / f"state-{ALICE}.json")
        with store(state_dir, ALICE).transaction() as tx:
            tx.activate("ea", pid=sleeper(user=AS_ALICE).pid)
    finally:
        for entry in state_dir.iterdir():
            planted = entry.name.startswith(".genv-planted-") or entry.name == f"state-{ALICE}.json"
            if planted and entry.is_dir() and not entry.is_symlink():
                _remove_deep_iteratively(entry)


def _remove_deep_iteratively(at: Path) -> None:
    depth = 0
    path = at
    while (path / "d").is_dir():
        path = path / "d"
        depth += 1
    # walk back up with relative paths (absolute ones would be too long)
    fd = os.open(at, os.O_RDONLY | os.O_DIRECTORY)
    chain = [fd]
    for _ in range(depth):
        chain.append(os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=chain[-1]))
    for parent in reversed(chain[:-1]):
        os.rmdir("d", dir_fd=parent)
    for fd in chain:
        os.close(fd)
    os.rmdir(at)


def test_a_lease_on_ones_own_file_shields_nothing(state_dir: Path, sleeper: Sleeper) -> None:
    """A write lease makes others' non-blocking opens fail: that is the owner's doing, so
    the owner's records count as unusable by their fault (they are enforced), never as
    unknown (left alone)."""
    process = sleeper(user=AS_BOB)
    path = write_records(state_dir, BOB, [env_of(BOB, "eb", process)])
    fd = os.open(path, os.O_RDWR)
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)  # a lease break tells its holder
    try:
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except OSError:
            pytest.skip("leases are not available here")
        state = Store(state_dir).read()
        [problem] = [p for p in state.problems if p.uid == BOB]
        assert problem.owner_fault
        assert BOB not in state.unknown_uids
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    finally:
        os.close(fd)
        signal.signal(signal.SIGIO, previous)


def test_a_leased_planted_lock_name_locks_nobody_out(state_dir: Path, sleeper: Sleeper) -> None:
    state_dir.mkdir(mode=0o1777)
    os.chmod(state_dir, 0o1777)
    planted = state_dir / f".lock-{ALICE}~7"
    planted.write_text("")
    os.chown(planted, BOB, -1)
    fd = os.open(planted, os.O_RDWR)
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)
    try:
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except OSError:
            pytest.skip("leases are not available here")
        with store(state_dir, ALICE).transaction(timeout=2) as tx:
            tx.activate("ea", pid=sleeper(user=AS_ALICE).pid)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    finally:
        os.close(fd)
        signal.signal(signal.SIGIO, previous)


def test_root_installs_a_users_lock_in_place_of_a_planted_one(state_dir: Path,
                                                              sleeper: Sleeper) -> None:
    """Once root replaced a planted lock name with the user's own file, nobody can take that
    name again."""
    import pwd

    real = next(u for u in pwd.getpwall() if u.pw_uid not in (0,) and u.pw_uid < 65534)
    state_dir.mkdir(mode=0o1777)
    os.chmod(state_dir, 0o1777)
    planted = state_dir / f".lock-{real.pw_uid}"
    planted.symlink_to("/etc/passwd")
    os.chown(planted, BOB, -1, follow_symlinks=False)
    Store(state_dir).read()
    info = os.stat(planted, follow_symlinks=False)
    assert stat.S_ISREG(info.st_mode) and info.st_uid == real.pw_uid
    assert stat.S_IMODE(info.st_mode) == 0o600


def test_a_file_with_another_name_is_not_trusted(state_dir: Path, sleeper: Sleeper) -> None:
    process = sleeper(user=AS_ALICE)
    path = write_records(state_dir, ALICE, [env_of(ALICE, "ea", process)])
    os.link(path, state_dir / "elsewhere")
    state = store(state_dir).read()
    assert state.environments == ()
    assert state.problems[0].uid == ALICE
