"""The store itself: files, modes, locking, liveness and who may change what."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from genv.domain.models import Attachment, EnvConfig, Environment, RegisteredProcess
from genv.store import NotFound, PermissionRefused, StateError, Store, records

ALICE = 40001  # uids with no passwd entry: root can still own files as them
BOB = 40002

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


def kernel(sleeper: Sleeper, shared_tmp: Path, kernel_id: str) -> subprocess.Popen[bytes]:
    """A process that looks like a Jupyter kernel (its connection file is an argument)."""
    connection = shared_tmp / f"kernel-{kernel_id}.json"
    return sleeper(argv=[sys.executable, "-c", "import time; time.sleep(3600)", str(connection)])


def write_records(state_dir: Path, uid: int, environments: list[Environment],
                  attachments: list[Attachment] | None = None) -> Path:
    state_dir.mkdir(mode=0o1777, exist_ok=True)
    os.chmod(state_dir, 0o1777)
    path = state_dir / f"state-{uid}.json"
    path.write_bytes(records.encode(uid, environments, attachments or []))
    os.chown(path, uid, -1)
    return path


def test_first_write_makes_the_folder_and_a_file_per_user(state_dir: Path,
                                                          sleeper: Sleeper) -> None:
    process = sleeper()
    with store(state_dir).transaction() as tx:
        tx.activate("e1", 0, pid=process.pid)
    info = os.stat(state_dir)
    assert stat.S_IMODE(info.st_mode) == 0o1777
    assert info.st_uid == 0
    path = state_dir / "state-0.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    data = json.loads(path.read_bytes())
    assert data["version"] == records.FORMAT_VERSION
    [env] = store(state_dir).read().environments
    assert env.eid == "e1"
    assert env.pids == (process.pid,)
    assert env.processes[0].start_time == pytest.approx(psutil.Process(process.pid).create_time())
    assert sorted(os.listdir(state_dir)) == [".lock", "state-0.json"]


def test_root_writes_a_users_file_owned_by_that_user(state_dir: Path, sleeper: Sleeper,
                                                     shared_tmp: Path) -> None:
    kernel(sleeper, shared_tmp, "k1")
    with store(state_dir).transaction() as tx:
        tx.activate("ea", ALICE, kernel_id="k1")
    assert (state_dir / f"state-{ALICE}.json").stat().st_uid == ALICE
    [env] = store(state_dir).read().environments
    assert (env.uid, env.kernel_ids) == (ALICE, ("k1",))


def test_nothing_is_saved_when_the_block_raises(state_dir: Path, sleeper: Sleeper) -> None:
    process = sleeper()
    with store(state_dir).transaction() as tx:
        tx.activate("e1", 0, pid=process.pid)
    before = (state_dir / "state-0.json").read_bytes()
    with pytest.raises(RuntimeError), store(state_dir).transaction() as tx:
        tx.configure("e1", name="changed")
        raise RuntimeError("boom")
    assert (state_dir / "state-0.json").read_bytes() == before
    assert not [name for name in os.listdir(state_dir) if name.endswith(".tmp")]


def test_configure_changes_and_clears(state_dir: Path, sleeper: Sleeper) -> None:
    process = sleeper()
    with store(state_dir).transaction() as tx:
        tx.activate("e1", 0, pid=process.pid)
        tx.attach("e1", [0])
        tx.configure("e1", name="n", gpus=2, gpu_memory="4g")
    state = store(state_dir).read()
    assert state.environments[0].config == EnvConfig("n", 2, "4g")
    assert state.attachments[0].gpu_memory == "4g"  # capacity follows onto attachments
    with store(state_dir).transaction() as tx:
        tx.configure("e1", name=None, gpu_memory=None)
    assert store(state_dir).read().environments[0].config == EnvConfig(None, 2, None)


def test_unknown_environment_is_not_found(state_dir: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"), store(state_dir).transaction() as tx:
        tx.configure("nope", name="x")


def test_lock_held_elsewhere_times_out(state_dir: Path) -> None:
    store(state_dir).read()  # creates the folder
    fd = os.open(state_dir / ".lock", os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(StateError, match="held"), store(state_dir).transaction(timeout=0.2):
            pass
    finally:
        os.close(fd)
    with store(state_dir).transaction(timeout=1):
        pass


# -- liveness --------------------------------------------------------------------------


def test_environment_ends_with_its_last_process(state_dir: Path, sleeper: Sleeper) -> None:
    first, second = sleeper(), sleeper()
    with store(state_dir).transaction() as tx:
        tx.activate("e1", 0, pid=first.pid)
        tx.activate("e1", 0, pid=second.pid)
        tx.attach("e1", [1, 2])
    first.kill()
    first.wait()
    [env] = store(state_dir).read().environments
    assert env.pids == (second.pid,)
    second.kill()
    second.wait()
    state = store(state_dir).read()
    assert state.environments == ()
    assert state.attachments == ()


def test_a_reused_pid_does_not_keep_an_environment_alive(state_dir: Path,
                                                         sleeper: Sleeper) -> None:
    process = sleeper()
    started = psutil.Process(process.pid).create_time()
    env = Environment("e1", 0, "root", started)
    write_records(state_dir, 0, [
        env,
        Environment("reused", 0, "root", started,
                    processes=(RegisteredProcess(process.pid, started - 100.0),)),
        Environment("same", 0, "root", started,
                    processes=(RegisteredProcess(process.pid, started),)),
    ], [Attachment(0, "reused", 0, started), Attachment(1, "same", 0, started)])
    state = store(state_dir).read()
    assert [e.eid for e in state.environments] == ["same"]
    assert [(a.device_index, a.eid) for a in state.attachments] == [(1, "same")]


def test_a_record_without_start_time_lives_while_the_pid_exists(state_dir: Path,
                                                                sleeper: Sleeper) -> None:
    process = sleeper()
    write_records(state_dir, 0, [Environment(
        "old", 0, None, 1.0, processes=(RegisteredProcess(process.pid, None),))])
    assert [e.eid for e in store(state_dir).read().environments] == ["old"]
    process.kill()
    process.wait()
    assert store(state_dir).read().environments == ()


def test_a_kernel_environment_lives_while_the_kernel_runs(state_dir: Path, sleeper: Sleeper,
                                                          shared_tmp: Path) -> None:
    process = kernel(sleeper, shared_tmp, "abc-123")
    with store(state_dir).transaction() as tx:
        tx.activate("k", 0, kernel_id="abc-123")
    assert [e.kernel_ids for e in store(state_dir).read().environments] == [("abc-123",)]
    process.kill()
    process.wait()
    assert store(state_dir).read().environments == ()


# -- permissions -----------------------------------------------------------------------


def test_users_may_not_act_for_others(state_dir: Path, sleeper: Sleeper,
                                      shared_tmp: Path) -> None:
    kernel(sleeper, shared_tmp, "ka")
    with store(state_dir, ALICE).transaction() as tx:
        tx.activate("ea", ALICE, kernel_id="ka")
    before = (state_dir / f"state-{ALICE}.json").read_bytes()
    attempts = [
        lambda tx: tx.activate("eb", ALICE, kernel_id="ka"),
        lambda tx: tx.activate("ea", BOB, kernel_id="ka"),
        lambda tx: tx.configure("ea", name="mine"),
        lambda tx: tx.attach("ea", [0]),
        lambda tx: tx.detach("ea"),
        lambda tx: tx.deactivate(kernel_id="ka"),
    ]
    for attempt in attempts:
        with pytest.raises(PermissionRefused, match="permission"), \
                store(state_dir, BOB).transaction() as tx:
            attempt(tx)
    assert (state_dir / f"state-{ALICE}.json").read_bytes() == before
    assert not (state_dir / f"state-{BOB}.json").exists()


def test_a_user_may_not_register_another_users_process(state_dir: Path,
                                                       sleeper: Sleeper) -> None:
    process = sleeper()  # a root process
    with pytest.raises(PermissionRefused, match="permission"), \
            store(state_dir, ALICE).transaction() as tx:
        tx.activate("ea", ALICE, pid=process.pid)


def test_root_may_change_anything(state_dir: Path, sleeper: Sleeper, shared_tmp: Path) -> None:
    kernel(sleeper, shared_tmp, "ka")
    with store(state_dir, ALICE).transaction() as tx:
        tx.activate("ea", ALICE, kernel_id="ka")
    with store(state_dir).transaction() as tx:
        tx.configure("ea", name="by-root")
        tx.attach("ea", [3])
    path = state_dir / f"state-{ALICE}.json"
    assert path.stat().st_uid == ALICE
    state = store(state_dir, ALICE).read()
    assert state.environments[0].config.name == "by-root"
    assert [a.device_index for a in state.attachments] == [3]


# -- files others planted --------------------------------------------------------------


def test_a_file_owned_by_someone_else_is_ignored(state_dir: Path, sleeper: Sleeper) -> None:
    process = sleeper()
    started = psutil.Process(process.pid).create_time()
    forged = write_records(state_dir, BOB, [Environment(
        "forged", BOB, None, started, processes=(RegisteredProcess(process.pid, started),))])
    os.chown(forged, ALICE, -1)
    state = store(state_dir, BOB).read()
    assert state.environments == ()
    [problem] = state.problems
    assert str(forged) in problem.line()
    # root's next write for bob replaces the planted file
    with store(state_dir).transaction() as tx:
        tx.activate("eb", BOB, pid=process.pid)
    assert forged.stat().st_uid == BOB
    assert [e.eid for e in store(state_dir, BOB).read().environments] == ["eb"]


def test_only_canonical_file_names_count(state_dir: Path, sleeper: Sleeper) -> None:
    process = sleeper()
    started = psutil.Process(process.pid).create_time()
    path = write_records(state_dir, 0, [Environment(
        "padded", 0, None, started, processes=(RegisteredProcess(process.pid, started),))])
    path.rename(state_dir / "state-00.json")
    os.chown(state_dir / "state-00.json", ALICE, -1)
    state = store(state_dir).read()
    assert state.environments == ()
    assert state.problems == ()
    with store(state_dir).transaction() as tx:  # root is not blocked by it
        tx.activate("e1", 0, pid=process.pid)


def test_a_planted_link_is_never_followed(state_dir: Path, sleeper: Sleeper,
                                          shared_tmp: Path) -> None:
    store(state_dir).read()
    victim = shared_tmp / "victim"
    victim.write_text("precious\n")
    (state_dir / "state-0.json").symlink_to(victim)
    process = sleeper()
    state = store(state_dir).read()
    assert state.problems and "link" in state.problems[0].line()
    with pytest.raises(StateError, match="state-0.json"), store(state_dir).transaction() as tx:
        tx.activate("e1", 0, pid=process.pid)
    assert victim.read_text() == "precious\n"
    assert (state_dir / "state-0.json").is_symlink()


def test_a_folder_in_place_of_a_file_is_reported(state_dir: Path) -> None:
    state_dir.mkdir(mode=0o1777)
    (state_dir / f"state-{ALICE}.json").mkdir()
    os.chown(state_dir / f"state-{ALICE}.json", ALICE, -1)
    state = store(state_dir).read()
    [problem] = state.problems
    assert problem.uid == ALICE
    assert "not a regular file" in problem.line()


def test_corrupt_file_blocks_only_its_owner(state_dir: Path, sleeper: Sleeper) -> None:
    state_dir.mkdir(mode=0o1777)
    os.chmod(state_dir, 0o1777)
    corrupt = state_dir / f"state-{ALICE}.json"
    corrupt.write_bytes(b'{"version": 1, "uid": 40001, "environ')
    os.chown(corrupt, ALICE, -1)
    process = sleeper()
    with store(state_dir).transaction() as tx:
        tx.activate("e1", 0, pid=process.pid)
    with pytest.raises(StateError, match=str(corrupt)), store(state_dir).transaction() as tx:
        tx.activate("ea", ALICE, kernel_id="whatever")
    with pytest.raises(StateError, match=str(corrupt)), \
            store(state_dir, ALICE).transaction() as tx:
        tx.configure("ea", name="x")
    assert corrupt.read_bytes() == b'{"version": 1, "uid": 40001, "environ'


def test_a_world_writable_folder_is_taken_over_by_root(state_dir: Path) -> None:
    state_dir.mkdir()
    os.chmod(state_dir, 0o777)
    os.chown(state_dir, ALICE, -1)
    store(state_dir).read()
    info = os.stat(state_dir)
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o1777)
