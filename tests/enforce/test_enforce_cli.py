"""``genv enforce --interval 0`` end to end: a simulated machine, real processes, the lines an
admin reads, and which processes really died."""

from __future__ import annotations

import re
import signal
import sys
import time

import pytest

from enforce_helpers import IGNORES_SIGTERM, json_lines, not_in_env, terminating

HEADER = "ID      ENV ID      ENV NAME        ATTACHED"



# -- the product description's quick start ------------------------------------------------


def test_quick_start_non_environment_processes(genv, machine, procs, env_of):
    machine.set_devices("80gi")
    quickstart = procs.start()
    machine.add(quickstart.pid, 0, "7295mi")

    result = genv.enforce("--non-env-processes")

    assert result.lines == [not_in_env(quickstart.pid), terminating(quickstart.pid)]
    assert procs.wait_dead(quickstart)
    assert quickstart.returncode == -signal.SIGTERM

    # "If you will activate an environment with attached devices and rerun all steps, you
    # will see that now the process does not get terminated."
    env_of("63500", attach=[0])
    quickstart = procs.start(eid="63500")
    machine.add(quickstart.pid, 0, "7295mi")

    assert genv.enforce("--non-env-processes").lines == []
    assert procs.alive(quickstart)


def test_quick_start_max_devices_per_user(genv, machine, procs, env_of):
    machine.set_devices("80gi")
    shell = env_of("67609", attach=[0])
    devices = genv.devices()
    assert devices[0] == HEADER
    assert re.fullmatch(r"0\s+67609\s+\d+ seconds? ago", devices[1]), devices
    quickstart = procs.start(eid="67609")
    machine.add(quickstart.pid, 0, "7295mi")

    assert genv.enforce("--max-devices-per-user", "1").lines == []
    assert procs.alive(quickstart)

    result = genv.enforce("--max-devices-per-user", "0")

    assert result.lines == [
        "User root is using 1 devices which is 1 more than the maximum allowed",
        terminating(quickstart.pid, "67609"),
        "Detaching environment 67609 of user root from device 0",
    ]
    assert procs.wait_dead(quickstart)
    assert genv.devices() == [HEADER, "0"]
    assert procs.alive(shell)  # the terminal stays
    assert genv.enforce("--max-devices-per-user", "0").lines == []  # nothing left to do


# -- each rule on and off -----------------------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--no-non-env-processes"]])
def test_non_env_processes_is_off_by_default(genv, machine, procs, flags):
    stray = procs.start()
    machine.add(stray.pid, 1, "1gi")
    assert genv.enforce(*flags).lines == []
    assert procs.alive(stray)


def test_env_devices_on_by_default_and_off(genv, machine, procs, env_of):
    shell = env_of("e1", attach=[0])
    fine = procs.start(eid="e1")
    machine.add(fine.pid, 0, "1gi")
    stray = procs.start(eid="e1")
    machine.add(stray.pid, 1, "1gi")

    assert genv.enforce("--no-env-devices").lines == []
    assert procs.alive(stray)

    result = genv.enforce()

    assert result.lines == [
        f"Process {stray.pid} from environment e1 is using non-attached GPU(s) 1",
        terminating(stray.pid, "e1", "1"),
    ]
    assert procs.wait_dead(stray)
    assert procs.alive(fine) and procs.alive(shell)
    assert genv.attachments() == [("0", "e1")]


def test_env_memory_on_by_default_and_off(genv, machine, procs, env_of):
    shell = env_of("e1", attach=[0], gpu_memory="2g")
    hungry = procs.start(eid="e1")
    machine.add(hungry.pid, 0, "3000mi")

    assert genv.enforce("--no-env-memory").lines == []
    assert procs.alive(hungry)

    result = genv.enforce("--env-memory")

    assert result.lines == [
        "Environment e1 is using 3145m on device 0 which is 1145m over its capacity of 2g",
        terminating(hungry.pid, "e1"),
    ]
    assert procs.wait_dead(hungry)
    assert procs.alive(shell)
    assert genv.attachments() == [("0", "e1")]


def test_env_memory_only_on_the_device_over_capacity(genv, machine, procs, env_of):
    env_of("e1", attach=[0, 1], gpu_memory="2g")
    on_0 = procs.start(eid="e1")
    machine.add(on_0.pid, 0, "3000mi")
    on_1 = procs.start(eid="e1")  # newer, but its device is under capacity
    machine.add(on_1.pid, 1, "1000mi")

    result = genv.enforce()

    assert result.lines == [
        "Environment e1 is using 3145m on device 0 which is 1145m over its capacity of 2g",
        terminating(on_0.pid, "e1"),
    ]
    assert procs.wait_dead(on_0)
    assert procs.alive(on_1)


def test_shell_ide_and_jupyter_server_stay(genv, machine, procs, env_of):
    """Only GPU processes are terminated: the environment's shell and servers stay."""
    shell = env_of("e1", attach=[0])
    server = procs.start(eid="e1")  # e.g. a Jupyter server: in the environment, not on a GPU
    genv.run("envs", "activate", "--eid", "e1", "--uid", "0", "--pid", str(server.pid))
    kernel = procs.start(eid="e1")
    machine.add(kernel.pid, 0, "7295mi")

    result = genv.enforce("--max-devices-per-user", "0")

    assert terminating(kernel.pid, "e1") in result.lines
    assert procs.wait_dead(kernel)
    assert procs.alive(shell) and procs.alive(server)
    assert genv.attachments() == []


def test_exemptions_are_never_terminated(genv, machine, procs):
    stray = procs.start()
    machine.add(stray.pid, 0, "1gi")

    assert genv.enforce("--non-env-processes", "--exempt-process", "sleep").lines == []
    assert genv.enforce("--non-env-processes", "--exempt-user", "root").lines == []
    assert genv.enforce("--max-memory-per-user", "1m", "--exempt-user", "root").lines == []
    assert procs.alive(stray)

    other = procs.start([sys.executable, "-c", "import time; time.sleep(60)"])
    machine.add(other.pid, 1, "1gi")
    result = genv.enforce("--non-env-processes", "--exempt-process", "sleep")
    assert result.lines == [not_in_env(other.pid), terminating(other.pid, devices="1")]
    assert procs.wait_dead(other)
    assert procs.alive(stray)


# -- per-user limits and the choice of victims ---------------------------------------------


def test_max_memory_per_user_terminates_the_newest_until_under(genv, machine, procs, env_of):
    env_of("e1", attach=[0, 1])
    oldest = procs.start(eid="e1")
    machine.add(oldest.pid, 0, "4000m")
    middle = procs.start()  # outside any environment: counts too
    machine.add(middle.pid, 1, "4000m")
    newest = procs.start(eid="e1")
    machine.add(newest.pid, 0, "4000m")

    assert genv.enforce("--max-memory-per-user", "12g").lines == []
    assert genv.enforce("--max-memory-per-user", "1g",
                        "--max-memory-for-user", "root=20g").lines == []

    result = genv.enforce("--max-memory-per-user", "10g")

    assert result.lines == [
        "User root is using 12000m of GPU memory which is 2000m over the maximum of 10g",
        terminating(newest.pid, "e1"),
        "  because it is the newest process of user root (frees 4000m)",
    ]
    assert procs.wait_dead(newest)
    assert procs.alive(oldest) and procs.alive(middle)


def test_max_memory_for_user_alone(genv, machine, procs):
    first = procs.start()
    machine.add(first.pid, 0, "3g")
    second = procs.start()
    machine.add(second.pid, 1, "3g")

    result = genv.enforce("--max-memory-for-user", "root=4g")

    assert result.lines[:2] == [
        "User root is using 6000m of GPU memory which is 2000m over the maximum of 4g",
        terminating(second.pid, devices="1"),
    ]
    assert procs.wait_dead(second)
    assert procs.alive(first)


def test_env_memory_victims_are_the_newest_until_under_capacity(genv, machine, procs, env_of):
    env_of("e1", attach=[0], gpu_memory="10g")
    oldest = procs.start(eid="e1")
    machine.add(oldest.pid, 0, "6000m")
    middle = procs.start(eid="e1")
    machine.add(middle.pid, 0, "3000m")
    newest = procs.start(eid="e1")
    machine.add(newest.pid, 0, "4000m")

    result = genv.enforce()

    assert result.lines == [
        "Environment e1 is using 13000m on device 0 which is 3000m over its capacity of 10g",
        terminating(newest.pid, "e1"),
        "  because it is the newest process of environment e1 on device 0 (frees 4000m)",
    ]
    assert procs.wait_dead(newest)
    assert procs.alive(oldest) and procs.alive(middle)


def test_idle_attachment_is_detached_before_a_busy_one(genv, machine, procs, env_of):
    env_of("e1", attach=[0])  # attached first, nothing runs on it
    time.sleep(0.05)
    genv.attach("e1", index=1)  # attached later, busy
    busy = procs.start(eid="e1")
    machine.add(busy.pid, 1, "1gi")

    result = genv.enforce("--max-devices-per-user", "1")

    assert result.lines == [
        "User root is using 2 devices which is 1 more than the maximum allowed",
        "Detaching environment e1 of user root from device 0",
        "  because no process of user root runs on device 0, so no work is lost",
    ]
    assert procs.alive(busy)
    assert genv.attachments() == [("1", "e1")]


def test_most_recent_attachment_is_detached_among_busy_ones(genv, machine, procs, env_of):
    env_of("e1", attach=[1])
    time.sleep(0.05)
    env_of("e2", attach=[0])  # the most recent
    first = procs.start(eid="e1")
    machine.add(first.pid, 1, "1gi")
    second = procs.start(eid="e2")
    machine.add(second.pid, 0, "1gi")

    result = genv.enforce("--max-devices-for-user", "root=1")

    assert result.lines == [
        "User root is using 2 devices which is 1 more than the maximum allowed",
        terminating(second.pid, "e2"),
        "Detaching environment e2 of user root from device 0",
        "  because device 0 is the one user root attached most recently",
    ]
    assert procs.wait_dead(second)
    assert procs.alive(first)
    assert genv.attachments() == [("1", "e1")]


# -- acting --------------------------------------------------------------------------------


def test_process_ignoring_sigterm_is_killed_after_the_grace(genv, machine, procs):
    stubborn = procs.start([sys.executable, "-c", IGNORES_SIGTERM], ready="ready")
    machine.add(stubborn.pid, 0, "1gi")

    started = time.monotonic()
    result = genv.enforce("--non-env-processes", "--grace", "1")
    took = time.monotonic() - started

    assert result.lines == [
        not_in_env(stubborn.pid),
        terminating(stubborn.pid),
        f"Killing process {stubborn.pid} from environment N/A, which did not exit within "
        "1 seconds of SIGTERM",
    ]
    assert procs.wait_dead(stubborn)
    assert stubborn.returncode == -signal.SIGKILL
    assert 1 <= took < 10


def test_one_shot_does_not_wait_for_the_grace_when_processes_exit(genv, machine, procs):
    quick = procs.start()
    machine.add(quick.pid, 0, "1gi")
    started = time.monotonic()
    genv.enforce("--non-env-processes", "--grace", "30")
    assert time.monotonic() - started < 10
    assert procs.wait_dead(quick)


def test_dry_run_prefixes_every_line_and_changes_nothing(genv, machine, procs, env_of,
                                                         state_dir):
    shell = env_of("e1", attach=[0, 1])
    stray = procs.start()
    machine.add(stray.pid, 0, "1gi")
    member = procs.start(eid="e1")
    machine.add(member.pid, 1, "1gi")
    before = {path.name: path.read_bytes() for path in state_dir.glob("state-*.json")}
    devices_before = genv.attachments()

    result = genv.enforce("--dry-run", "--non-env-processes", "--max-devices-per-user", "0")

    assert result.lines == [
        "[dry-run] " + not_in_env(stray.pid),
        "[dry-run] User root is using 2 devices which is 2 more than the maximum allowed",
        "[dry-run] " + terminating(stray.pid),
        "[dry-run] " + terminating(member.pid, "e1", "1"),
        "[dry-run] Detaching environment e1 of user root from device 1",
        "[dry-run] Detaching environment e1 of user root from device 0",
    ]
    assert procs.alive(stray) and procs.alive(member) and procs.alive(shell)
    assert {path.name: path.read_bytes() for path in state_dir.glob("state-*.json")} == before
    assert genv.attachments() == devices_before


def test_json_log_format(genv, machine, procs, env_of):
    env_of("e1", attach=[0, 1])
    stray = procs.start()
    machine.add(stray.pid, 0, "7295mi")
    member = procs.start(eid="e1")
    machine.add(member.pid, 1, "1gi")

    result = genv.enforce("--log-format", "json", "--non-env-processes",
                          "--max-devices-per-user", "1")

    records = json_lines(result.stdout)
    keys = {"time", "rule", "pid", "uid", "user", "environment", "device", "memory", "reason",
            "action"}
    for record in records:
        assert keys <= set(record), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", record["time"])
    by_action = {}
    for record in records:
        by_action.setdefault(record["action"], []).append(record)
    assert [r["message"] for r in by_action["finding"]] == [
        not_in_env(stray.pid),
        "User root is using 2 devices which is 1 more than the maximum allowed",
    ]
    finding = by_action["finding"][0]
    assert (finding["rule"], finding["pid"], finding["uid"], finding["user"]) == (
        "non-env-processes", stray.pid, 0, "root")
    terminate = by_action["terminate"][0]
    assert terminate == {
        **terminate,
        "rule": "non-env-processes", "pid": stray.pid, "uid": 0, "user": "root",
        "environment": None, "device": [0], "memory": 7295 * 2**20, "process": "sleep",
        "message": terminating(stray.pid),
    }
    assert terminate["reason"]
    (detach,) = by_action["detach"]
    # root's stray process is on device 0 too: device 1, attached last, goes
    assert (detach["rule"], detach["environment"], detach["device"], detach["user"]) == (
        "max-devices-per-user", "e1", [1], "root")
    assert procs.wait_dead(stray)


def test_no_traceback_on_a_missing_machine_file(genv, machine):
    machine.path.unlink()
    result = genv.run("enforce", "--interval", "0", check=False)
    assert result.rc == 1  # a one-shot run that saw nothing must not look like success
    assert "Traceback" not in result.stderr
    assert str(machine.path) in result.stderr
