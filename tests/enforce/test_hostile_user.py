"""Bob, a hostile user, against alice and against root's daemon: one test per class of
attack, end to end with the real ``genv enforce`` and real Linux users and processes.

- posing as an exempt program (copied, renamed): only the path an admin named is exempt;
- claiming alice's environment: an impostor, and alice is not hurt;
- registering alice's processes or kernels, or posing as her kernel: keeps nothing alive;
- breaking his own state file (unreadable, corrupt, huge, deeply nested): shields nothing
  of his, and every rule still runs for alice;
- planting names (links, folders, fifos) in the state folder: never stalls the daemon.
"""

from __future__ import annotations

import os
import shutil
import stat
import time

import pytest

from genv.domain.models import Attachment, Environment, RegisteredProcess

from enforce_helpers import as_user, not_in_env, terminating
from support import encode_records, start_of, wait_cmdline

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (real users)")

SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
TAIL = os.path.realpath(shutil.which("tail") or "/usr/bin/tail")


def environments(genv) -> set[str]:
    """The ids of every live environment (as root sees them)."""
    rows = genv.run("envs", "ps", "--format", "csv", "--no-header",
                    check=False).stdout.splitlines()
    return {row.split(",")[0] for row in rows if row}


def write_own_file(user, state_dir, data: bytes) -> None:
    """``user`` writes their own state file, bytes of their choosing."""
    path = state_dir / f"state-{user.uid}.json"

    def write() -> None:
        temporary = state_dir / f".mine-{user.uid}.tmp"
        temporary.write_bytes(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)

    as_user(user, write)


# -- posing as exempt ----------------------------------------------------------------------


def test_a_copied_or_renamed_program_is_not_the_exempt_one(genv, machine, procs, shared_dir,
                                                           bob):
    own = shared_dir / "bob"
    own.mkdir()
    os.chown(own, bob.uid, bob.gid)

    def make_copies() -> None:
        shutil.copy(SLEEP, own / "sleep")  # the very program, copied
        shutil.copy(TAIL, own / "sleep2")  # another program, under the exempt one's name
        os.rename(own / "sleep2", own / "renamed")
        os.mkdir(own / "x")
        shutil.copy(TAIL, own / "x" / "sleep")
        os.symlink(SLEEP, own / "innocent")  # the real exempt program, by a link

    as_user(bob, make_copies)
    copy = procs.start([str(own / "sleep"), "300"], user=bob)
    renamed = procs.start([str(own / "x" / "sleep"), "-f", "/dev/null"], user=bob)
    argv0 = procs.start(["bash", "-c", f"exec -a sleep {TAIL} -f /dev/null"], user=bob)
    real = procs.start([str(own / "innocent"), "300"], user=bob)
    wait_cmdline(argv0.pid, "/dev/null")
    for index, process in enumerate((copy, renamed, argv0, real)):
        machine.add(process.pid, index % 2, "1gi")

    result = genv.enforce("--non-env-processes", "--exempt-process", "sleep", "--grace", "1")

    for process in (copy, renamed, argv0):
        assert not_in_env(process.pid) in result.lines
        assert procs.wait_dead(process)
    assert procs.alive(real)  # what runs is the program the admin named: exempt
    assert str(real.pid) not in result.stdout


def test_another_program_mounted_over_the_exempt_path_in_a_namespace_is_not_exempt(
        genv, machine, procs, shared_dir, bob):
    """/proc/PID/exe gives the path in the process's own mount namespace, which any user may
    make (``unshare -Urm``) and mount another program over the exempt path in: only the file
    at that path here, the very one, is exempt."""
    import subprocess

    own = shared_dir / "bob-ns"
    own.mkdir()
    os.chown(own, bob.uid, bob.gid)
    as_user(bob, lambda: shutil.copy(TAIL, own / "tail"))
    probe = subprocess.run(["unshare", "-Urm", "true"], preexec_fn=bob.become(),
                           capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no user namespaces for users here: {probe.stderr.decode().strip()}")
    posing = procs.start(["unshare", "-Urm", "sh", "-c",
                          f"mount --bind {own / 'tail'} {SLEEP} && exec {SLEEP} -f /dev/null"],
                         user=bob)
    wait_cmdline(posing.pid, "/dev/null")
    assert os.readlink(f"/proc/{posing.pid}/exe") == SLEEP  # the path it shows is the exempt one
    real = procs.start([SLEEP, "300"], user=bob)
    machine.add(posing.pid, 0, "1gi")
    machine.add(real.pid, 1, "1gi")

    result = genv.enforce("--non-env-processes", "--exempt-process", "sleep", "--grace", "1")

    assert not_in_env(posing.pid) in result.lines
    assert procs.wait_dead(posing)
    assert procs.alive(real)
    assert str(real.pid) not in result.stdout


# -- claiming another user's environment ---------------------------------------------------


def test_claiming_alices_environment_makes_an_impostor_and_alice_is_not_hurt(
        genv, machine, procs, env_of, alice, bob):
    shell = env_of("ae", user=alice, attach=[0], gpu_memory="2g")
    alices = procs.start(user=alice, eid="ae")
    machine.add(alices.pid, 0, "1gi")
    impostor = procs.start(user=bob, eid="ae")  # over her capacity, on a device not hers
    machine.add(impostor.pid, 0, "30gi")
    machine.add(impostor.pid, 1, "30gi")
    rules = ("--non-env-processes", "--max-devices-per-user", "1", "--max-memory-per-user",
             "100g", "--grace", "1")

    result = genv.enforce(*rules)

    assert result.lines == [
        f"Process {impostor.pid} is not running in a GPU environment: it claims environment "
        f"ae of {alice.name}, which it does not own",
        terminating(impostor.pid, "N/A", "0,1"),
    ]
    assert procs.wait_dead(impostor)
    assert procs.alive(alices) and procs.alive(shell)
    assert genv.attachments() == [("0", "ae")]

    # bob makes an environment of his own under her id (ids are per owner): his process is
    # in his environment, which holds no device; hers is untouched
    squatter = procs.start(user=bob, eid="ae")
    assert genv.run_as(bob, "envs", "activate", "--eid", "ae", "--uid", str(bob.uid),
                       "--pid", str(squatter.pid)).rc == 0
    claimer = procs.start(user=bob, eid="ae")
    machine.add(claimer.pid, 0, "30gi")

    result = genv.enforce(*rules)

    assert result.lines == [
        f"Process {claimer.pid} from environment ae is using non-attached GPU(s) 0",
        terminating(claimer.pid, "ae", "0"),
    ]
    assert procs.wait_dead(claimer)
    assert procs.alive(alices) and procs.alive(shell) and procs.alive(squatter)
    assert genv.attachments() == [("0", "ae")]


# -- keeping things alive with other users' processes --------------------------------------


def kernel_process(procs, user, kernel: str):
    """A process whose command line names a Jupyter kernel connection file, as ``user``."""
    process = procs.start([TAIL, "-f", "/dev/null", f"/tmp/kernel-{kernel}.json"], user=user)
    wait_cmdline(process.pid, f"kernel-{kernel}.json")
    return process


def test_registering_alices_processes_or_kernels_keeps_nothing_alive(
        genv, machine, procs, env_of, state_dir, alice, bob):
    alice_shell = env_of("ae", user=alice, attach=[0])
    alice_kernel = kernel_process(procs, alice, "k-alice")
    # the command refuses another user's process
    refused = genv.run_as(bob, "envs", "activate", "--eid", "be", "--uid", str(bob.uid),
                          "--pid", str(alice_shell.pid))
    assert refused.rc != 0 and "belongs to another user" in refused.stderr
    # so bob writes his file by hand: an environment kept by alice's shell and another by
    # alice's kernel, each holding a device
    now = time.time()
    write_own_file(bob, state_dir, encode_records(bob.uid, [
        Environment("be", bob.uid, bob.name, now,
                    processes=(RegisteredProcess(alice_shell.pid, start_of(alice_shell.pid)),)),
        Environment("bk", bob.uid, bob.name, now, kernel_ids=("k-alice",)),
    ], [Attachment(1, "be", bob.uid, now), Attachment(1, "bk", bob.uid, now)]))
    bobs = procs.start(user=bob, eid="be")
    machine.add(bobs.pid, 1, "1gi")

    assert environments(genv) == {"ae"}  # neither of bob's is alive
    assert genv.attachments() == [("0", "ae")]
    result = genv.enforce("--non-env-processes", "--grace", "1")
    assert result.lines == [not_in_env(bobs.pid), terminating(bobs.pid, "N/A", "1")]
    assert procs.wait_dead(bobs)
    assert genv.run_as(alice, "devices", "attach", "--eid", "ae", "--index", "1").rc == 0
    assert procs.alive(alice_shell) and procs.alive(alice_kernel)


def test_posing_as_alices_kernel_does_not_keep_her_environment(genv, machine, procs, alice,
                                                                bob):
    kernel = kernel_process(procs, alice, "k-7")
    assert genv.run_as(alice, "envs", "activate", "--eid", "ak", "--uid", str(alice.uid),
                       "--kernel-id", "k-7").rc == 0
    assert genv.run_as(alice, "devices", "attach", "--eid", "ak", "--index", "0").rc == 0
    assert environments(genv) == {"ak"}
    fake = kernel_process(procs, bob, "k-7")  # bob's process names her kernel's file

    kernel.kill()
    kernel.wait()

    assert environments(genv) == set()  # her kernel is gone: so is her environment
    assert genv.attachments() == []
    assert genv.run_as(bob, "envs", "activate", "--eid", "bk", "--uid", str(bob.uid),
                       "--kernel-id", "k-7").rc == 0
    assert environments(genv) == {"bk"}  # his own kernel (his process) keeps his
    assert procs.alive(fake)


# -- breaking one's own state file ---------------------------------------------------------


def make_unreadable(path) -> None:
    os.chmod(path, 0)


def make_a_fifo(path) -> None:
    os.unlink(path)
    os.mkfifo(path, 0o644)


def make_corrupt(path) -> None:
    path.write_bytes(b'{"version": 2, "environments": [{"eid": "be", "processes": [[1, 2')


def make_huge(path) -> None:
    with open(path, "r+b") as file:
        file.truncate(100 << 20)  # 100 MB, sparse


def make_deep(path) -> None:
    path.write_bytes(b"[" * 200_000 + b"]" * 200_000)


@pytest.mark.parametrize("breaking", [make_unreadable, make_a_fifo, make_corrupt, make_huge,
                                      make_deep],
                         ids=["unreadable", "fifo", "corrupt", "huge", "deep"])
def test_breaking_ones_own_state_file_shields_nothing_and_every_rule_runs_for_others(
        genv, machine, procs, env_of, state_dir, alice, bob, breaking):
    env_of("ae", user=alice, attach=[0], gpu_memory="2g")
    alice_ok = procs.start(user=alice, eid="ae")
    machine.add(alice_ok.pid, 0, "1g")
    alice_greedy = procs.start(user=alice, eid="ae")  # newest: over her capacity with it
    machine.add(alice_greedy.pid, 0, "2g")
    alice_stray = procs.start(user=alice, eid="ae")
    machine.add(alice_stray.pid, 1, "1g")  # not attached to ae
    env_of("be", user=bob, attach=[1])
    bobs = procs.start(user=bob, eid="be")
    machine.add(bobs.pid, 1, "1g")
    bobs_file = state_dir / f"state-{bob.uid}.json"
    assert os.stat(bobs_file).st_uid == bob.uid

    as_user(bob, lambda: breaking(bobs_file))

    result = genv.enforce("--non-env-processes", "--max-memory-per-user", "100g",
                          "--max-devices-per-user", "2", "--grace", "1")

    # alice: every rule ran
    assert ("Environment ae is using 3000m on device 0 which is 1000m over its capacity "
            "of 2g") in result.lines
    assert terminating(alice_greedy.pid, "ae", "0") in result.lines
    assert (f"Process {alice_stray.pid} from environment ae is using non-attached GPU(s) 1"
            in result.lines)
    assert procs.wait_dead(alice_greedy) and procs.wait_dead(alice_stray)
    assert procs.alive(alice_ok)
    assert ("0", "ae") in genv.attachments()
    # bob: shielded by nothing (root reads a file of mode 0 as it is: it shields nothing
    # either way)
    if breaking is make_unreadable:
        assert str(bobs.pid) not in result.stdout
        assert procs.alive(bobs)
        # alice cannot read his file, but root said which devices he holds: not given twice
        taken = genv.run_as(alice, "devices", "attach", "--eid", "ae", "--index", "1")
        assert taken.rc != 0 and "Traceback" not in taken.stderr, taken
    else:
        assert result.lines[0] == (
            f"Process {bobs.pid} is not running in a GPU environment: it claims environment "
            "be, but its owner's state file is unusable")
        assert procs.wait_dead(bobs)
        assert str(bobs_file) in result.stderr
    assert "Traceback" not in result.stderr
    # and alice's own commands still work
    for args in (("envs",), ("devices",)):
        done = genv.run_as(alice, *args)
        assert done.rc == 0 and "Traceback" not in done.stderr, done.stderr


# -- planting names in the state folder ----------------------------------------------------


def test_names_planted_in_the_state_folder_never_stall_the_daemon(genv, machine, procs, env_of,
                                                                  state_dir, alice, bob):
    env_of("ae", user=alice, attach=[0, 1])
    member = procs.start(user=alice, eid="ae")
    machine.add(member.pid, 1, "1gi")

    def plant() -> list[str]:
        """Every name of root's and alice's that is still free: fifos, links, folders."""
        planted = []
        kinds = {
            "fifo": lambda path: os.mkfifo(path, 0o666),
            "link": lambda path: os.symlink("/dev/zero", path),
            "folder": lambda path: (os.mkdir(path), (path / "inside").write_text("x")),
        }
        names = [".enforce-0.pid", "device-0.lock", "device-1.lock", "state-0.json"]
        for uid in (0, alice.uid):
            names += [f".lock-{uid}"] + [f".lock-{uid}~{rank}" for rank in range(1, 4)]
            names += [f"state-{uid}~{rank}.json" for rank in range(1, 4)]
        for number, name in enumerate(names):
            path = state_dir / name
            if not os.path.lexists(path):
                kinds[("fifo", "link", "folder")[number % 3]](path)
                planted.append(name)
        return planted

    planted = as_user(bob, plant)
    assert ".enforce-0.pid" in planted and f"state-{alice.uid}~1.json" in planted

    daemon = genv.start("--interval", "0.2", "--non-env-processes", "--grace", "1",
                        "--max-devices-per-user", "1")
    # root detaches one of alice's devices: a revocation under root's lock, planted or not
    daemon.wait_for(f"Detaching environment ae of user {alice.name} from device 0",
                    timeout=10)
    stray = procs.start(user=bob)
    machine.add(stray.pid, 0, "1gi")
    began = time.monotonic()
    daemon.wait_for(not_in_env(stray.pid), timeout=10)
    assert time.monotonic() - began < 5
    assert procs.wait_dead(stray)

    # root has put alice's own lock files in place of the planted lock names: those cannot
    # be taken again
    lock = os.stat(state_dir / f".lock-{alice.uid}~3", follow_symlinks=False)
    assert stat.S_ISREG(lock.st_mode) and lock.st_uid == alice.uid
    # more names while it runs; alice's own commands are not stalled either
    as_user(bob, lambda: os.mkfifo(state_dir / f".lock-{alice.uid}~5", 0o666))
    began = time.monotonic()
    assert genv.run_as(alice, "devices", "attach", "--eid", "ae", "--index", "0").rc == 0
    assert time.monotonic() - began < 5
    stray = procs.start(user=bob)
    machine.add(stray.pid, 1, "1gi")
    daemon.wait_for(not_in_env(stray.pid), timeout=10)
    assert procs.wait_dead(stray)
    assert daemon.running()
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr()
    assert procs.alive(member)
