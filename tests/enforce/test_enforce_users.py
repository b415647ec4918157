"""Enforcement on a machine shared by real Linux users: who a process belongs to is decided
by who runs it, not by what it claims; what cannot be told is left alone."""

from __future__ import annotations

import os

import pytest

from enforce_helpers import terminating

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (other users' processes)")


def test_impostor_is_treated_as_outside_any_environment(genv, machine, procs, env_of, alice,
                                                        bob):
    shell = env_of("ae", user=alice, attach=[0], gpu_memory="2g")
    alices = procs.start(user=alice, eid="ae")
    machine.add(alices.pid, 0, "1gi")
    impostor = procs.start(user=bob, eid="ae")  # claims alice's environment
    machine.add(impostor.pid, 0, "30gi")

    # not alice's: neither over alice's capacity nor on a device not attached to her
    assert genv.enforce().lines == []
    assert genv.enforce("--max-devices-per-user", "1").lines == []
    assert procs.alive(impostor)

    result = genv.enforce("--non-env-processes")

    assert result.lines == [
        f"Process {impostor.pid} is not running in a GPU environment: it claims environment "
        f"ae of {alice.name}, which it does not own",
        f"Terminating process {impostor.pid} from environment N/A that is running on GPU(s) 0",
    ]
    assert procs.wait_dead(impostor)
    assert procs.alive(alices) and procs.alive(shell)
    assert genv.attachments() == [("0", "ae")]


def test_impostor_on_another_device_does_not_get_the_owner_terminated(genv, machine, procs,
                                                                       env_of, alice, bob):
    env_of("ae", user=alice, attach=[0])
    alices = procs.start(user=alice, eid="ae")
    machine.add(alices.pid, 0, "1gi")
    impostor = procs.start(user=bob, eid="ae")
    machine.add(impostor.pid, 1, "1gi")

    result = genv.enforce("--max-devices-per-user", "1", "--max-memory-per-user", "2g")

    assert result.lines == []
    assert procs.alive(alices) and procs.alive(impostor)


def test_root_process_in_a_users_environment_belongs_to_it(genv, machine, procs, env_of,
                                                           alice):
    """Root running inside alice's environment (a container started from it, say)."""
    env_of("ae", user=alice, attach=[0])
    container = procs.start(eid="ae")  # root's
    machine.add(container.pid, 1, "1gi")

    result = genv.enforce()

    assert result.lines == [
        f"Process {container.pid} from environment ae is using non-attached GPU(s) 1",
        f"Terminating process {container.pid} from environment ae that is running on GPU(s) 1",
    ]
    assert procs.wait_dead(container)


def test_per_user_limits_count_each_users_processes(genv, machine, procs, env_of, alice, bob):
    env_of("ae", user=alice, attach=[0])
    env_of("be", user=bob, attach=[1])
    alice_old = procs.start(user=alice, eid="ae")
    machine.add(alice_old.pid, 0, "3g")
    alice_new = procs.start(user=alice, eid="ae")
    machine.add(alice_new.pid, 0, "3g")
    bobs = procs.start(user=bob, eid="be")
    machine.add(bobs.pid, 1, "5g")

    result = genv.enforce("--max-memory-per-user", "5g",
                          "--max-memory-for-user", f"{bob.name}=8g")

    assert result.lines[:2] == [
        f"User {alice.name} is using 6000m of GPU memory which is 1000m over the maximum of 5g",
        f"Terminating process {alice_new.pid} from environment ae that is running on GPU(s) 0",
    ]
    assert procs.wait_dead(alice_new)
    assert procs.alive(alice_old) and procs.alive(bobs)

    result = genv.enforce("--max-devices-per-user", "1", "--max-devices-for-user",
                          f"{bob.name}=0")
    assert result.lines == [
        f"User {bob.name} is using 1 devices which is 1 more than the maximum allowed",
        f"Terminating process {bobs.pid} from environment be that is running on GPU(s) 1",
        f"Detaching environment be of user {bob.name} from device 1",
    ]
    assert procs.wait_dead(bobs)
    assert genv.attachments() == [("0", "ae")]


def test_unreadable_environment_is_reported_and_left_alone(genv, machine, procs, alice, bob):
    """An enforcer without root cannot read bob's environment: it says so and acts on
    nothing it cannot tell, while still enforcing on what it can."""
    bobs = procs.start(user=bob, eid="whatever")
    machine.add(bobs.pid, 0, "1gi")
    alices = procs.start(user=alice)
    machine.add(alices.pid, 1, "1gi")

    result = genv.run_as(alice, "enforce", "--interval", "0", "--non-env-processes",
                         "--max-memory-per-user", "1m", "--grace", "1")

    assert result.rc == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert f"process {bobs.pid}" in result.stderr
    assert "permission" in result.stderr and "sudo" in result.stderr
    assert str(bobs.pid) not in result.stdout
    assert procs.alive(bobs)
    # what alice's enforcer can tell, it enforces
    assert (
        f"Terminating process {alices.pid} from environment N/A that is running on GPU(s) 1"
        in result.lines
    )
    assert procs.wait_dead(alices)


@pytest.mark.parametrize("owner", ["root", "alice"])
def test_a_user_who_broke_their_own_state_file_is_not_shielded_by_it(
        owner, genv, machine, procs, env_of, state_dir, request):
    user = request.getfixturevalue("alice") if owner == "alice" else None
    uid = user.uid if user else 0
    if user:
        env_of("ce", user=user, attach=[0])
    else:
        env_of("ce", attach=[0])
    member = procs.start(user=user, eid="ce")
    machine.add(member.pid, 1, "70gi")  # on a device not attached, over any limit
    state_file = state_dir / f"state-{uid}.json"
    assert state_file.exists()
    with open(state_file, "r+") as handle:  # keeps the owner
        handle.truncate(0)
        handle.write('{"version": 1, "environments": [')
    assert os.stat(state_file).st_uid == uid

    result = genv.enforce("--non-env-processes", "--max-devices-per-user", "0",
                          "--max-memory-per-user", "1m", "--grace", "1")

    # as if that user had no environments: enforced, and the line says why
    assert result.lines[0] == (
        f"Process {member.pid} is not running in a GPU environment: it claims environment "
        "ce, but its owner's state file is unusable")
    assert terminating(member.pid, "N/A", "1") in result.lines
    assert procs.wait_dead(member)
    assert str(state_file) in result.stderr and "corrupt" in result.stderr
    assert state_file.read_text() == '{"version": 1, "environments": ['  # not overwritten


def test_user_is_who_owns_the_environment_not_the_name_its_record_gives(genv, machine, procs,
                                                                        alice):
    """``genv envs activate --username`` writes any name into the record: limits and
    exemptions must go by the owner the system knows, or anyone could pose as an exempt
    user."""
    shell = procs.start(user=alice, eid="ae")
    genv.run("envs", "activate", "--eid", "ae", "--uid", str(alice.uid), "--username", "root",
             "--pid", str(shell.pid))
    genv.attach("ae", index=0)
    gpu = procs.start(user=alice, eid="ae")
    machine.add(gpu.pid, 0, "1gi")

    result = genv.enforce("--max-devices-per-user", "0", "--exempt-user", "root")

    assert result.lines == [
        f"User {alice.name} is using 1 devices which is 1 more than the maximum allowed",
        f"Terminating process {gpu.pid} from environment ae that is running on GPU(s) 0",
        f"Detaching environment ae of user {alice.name} from device 0",
    ]
    assert procs.wait_dead(gpu)
    assert procs.alive(shell)


def test_impostor_message_names_the_real_owner(genv, machine, procs, alice, bob):
    shell = procs.start(user=alice, eid="ae")
    genv.run("envs", "activate", "--eid", "ae", "--uid", str(alice.uid), "--username",
             bob.name, "--pid", str(shell.pid))
    impostor = procs.start(user=bob, eid="ae")
    machine.add(impostor.pid, 0, "1gi")

    result = genv.enforce("--non-env-processes")

    assert result.lines[0] == (
        f"Process {impostor.pid} is not running in a GPU environment: it claims environment "
        f"ae of {alice.name}, which it does not own"
    )
