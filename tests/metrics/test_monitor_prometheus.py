"""``genv monitor`` scraped by a real Prometheus: every metric, asked through PromQL, matches
the simulated machine (real users, real processes); a process that ends leaves the view."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from promkit import free_port, wait_http

GI = 1024**3
MI = 1024**2


@pytest.fixture
def users(linux_users, user_runtime, fake_machine):
    return linux_users


def start_monitor(genv_popen, port: int, config_dir: Path, *extra: str) -> subprocess.Popen:
    monitor = genv_popen(
        "monitor", "-p", str(port), "-i", "0.5", "--config-dir", str(config_dir), *extra
    )
    wait_http(f"http://127.0.0.1:{port}/metrics", alive=lambda: monitor.poll() is None)
    return monitor


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "Traceback" not in err, err
    return err


def test_prometheus_sees_the_machine(
    users, fake_machine, run_genv, new_env, sleeper, genv_popen, prometheus, shared_tmp
):
    alice, bob = users.alice, users.bob
    fake_machine.devices = [
        {"total_memory": "80gi", "temperature": 41, "utilization": 87},
        {"total_memory": "80gi", "temperature": 39, "utilization": 5},
        {"total_memory": "16gi"},
    ]
    fake_machine.write()
    # alice: ea, 10g reserved on device 0; bob: eb on device 1, no capacity
    new_env("ea", user=alice, name="train", gpu_memory="10g")
    assert run_genv("devices", "attach", "--eid", "ea", "--index", "0", user=alice).rc == 0
    new_env("eb", user=bob)
    assert run_genv("devices", "attach", "--eid", "eb", "--index", "1", user=bob).rc == 0
    a1 = sleeper(user=alice, env={"GENV_ENVIRONMENT_ID": "ea"})
    a2 = sleeper(user=alice, env={"GENV_ENVIRONMENT_ID": "ea"})
    b1 = sleeper(user=bob, env={"GENV_ENVIRONMENT_ID": "eb"})
    impostor = sleeper(user=bob, env={"GENV_ENVIRONMENT_ID": "ea"})
    stray = sleeper()
    fake_machine.processes = [
        {"pid": a1.pid, "device": 0, "used_memory": "3gi"},
        {"pid": a2.pid, "device": 1, "used_memory": "1gi"},
        {"pid": b1.pid, "device": 1, "used_memory": "2gi"},
        {"pid": impostor.pid, "device": 2, "used_memory": "512mi"},
        {"pid": stray.pid, "device": 2, "used_memory": "1gi"},
    ]
    fake_machine.write()
    broken = fake_machine.state_dir / "state-4242.json"  # a user's file that is not JSON
    broken.write_bytes(b"{not json")
    os.chown(broken, 4242, 4242)

    port = free_port()
    monitor = start_monitor(genv_popen, port, shared_tmp / "monitor")
    prometheus.start({"genv": [f"127.0.0.1:{port}"]})
    prometheus.wait_for("genv_environments_total", lambda found: bool(found))
    value = prometheus.value

    # genv 1.4.3's metrics
    assert value("genv_is_installed") == 1
    assert value("genv_environments_total") == 2
    assert value("genv_users_total") == 2
    assert value("genv_processes_total") == 5
    assert value("genv_attached_devices_total") == 2
    for index, used, total, temperature, utilization in (
        ("0", 3 * GI, 80 * GI, 41, 87),
        ("1", 3 * GI, 80 * GI, 39, 5),
        ("2", 1536 * MI, 16 * GI, None, None),
    ):
        assert value("genv_device_memory_used_bytes", index=index) == used
        assert value("genv_device_memory_total_bytes", index=index) == total
        assert value("genv_device_temperature", index=index) == temperature
        assert value("genv_device_utilization", index=index) == utilization
    assert value("genv_environment_processes_total", eid="ea") == 2
    assert value("genv_environment_processes_total", eid="eb") == 1
    assert value("genv_environment_attached_devices_total", eid="ea") == 1
    for process, eid, device, used in (
        (a1, "ea", "0", 3 * GI),
        (a2, "ea", "1", GI),
        (b1, "eb", "1", 2 * GI),
        (impostor, "", "2", 512 * MI),  # claims alice's environment: in none
        (stray, "", "2", GI),
    ):
        pid = str(process.pid)
        assert value("genv_process_devices_total", pid=pid, eid=eid) == 1
        assert value("genv_process_used_gpu_memory_bytes", pid=pid, eid=eid, device=device) == used
    for user, envs, processes, attached in ((alice, 1, 2, 1), (bob, 1, 1, 1)):
        assert value("genv_user_environments_total", username=user.name) == envs
        assert value("genv_user_processes_total", username=user.name) == processes
        assert value("genv_user_attached_devices_total", username=user.name) == attached

    # what genv 1.4.3 lacked: memory against capacity, devices per user, problems
    assert value("genv_device_memory_reserved_bytes", index="0") == 10 * 10**9
    assert value("genv_device_memory_reserved_bytes", index="1") == 80 * GI  # no capacity
    assert value("genv_device_attached_environments", index="2") == 0
    assert value("genv_environment_info", eid="ea", username=alice.name, name="train") == 1
    used = "genv_environment_gpu_memory_used_bytes"
    capacity = "genv_environment_gpu_memory_capacity_bytes"
    assert value(used, eid="ea", device="0") == 3 * GI
    assert value(used, eid="ea", device="1") == GI  # on a device it is not attached to
    assert value(capacity, eid="ea", username=alice.name, device="0") == 10 * 10**9
    assert value(capacity, eid="ea", device="1") is None
    assert value(capacity, eid="eb", username=bob.name, device="1") == 80 * GI
    for user, memory, reserved, in_use, processes in (
        (alice.name, 4 * GI, 10 * 10**9, 2, 2),
        (bob.name, 2560 * MI, 80 * GI, 2, 2),
        ("root", GI, None, 1, 1),
    ):
        assert value("genv_user_gpu_memory_used_bytes", username=user) == memory
        assert value("genv_user_gpu_memory_capacity_bytes", username=user) == reserved
        assert value("genv_user_devices_in_use", username=user) == in_use
        assert value("genv_user_gpu_processes", username=user) == processes
    for membership, count in (("in-env", 3), ("no-env", 1), ("impostor", 1), ("unknown", 0)):
        assert value("genv_gpu_processes", membership=membership) == count
    assert value("genv_state_problems", kind="invalid") == 1
    assert value("genv_user_state_problem", username="uid 4242", kind="invalid") == 1
    assert value("genv_gpu_view_partial") == 0
    assert value("genv_process_series_omitted") == 0
    assert value("genv_exporter_collection_errors_total") == 0
    assert value("time() - genv_exporter_last_collection_timestamp_seconds") < 30

    # a process ends: the next scrapes say so
    os.kill(a2.pid, signal.SIGKILL)
    a2.wait()
    prometheus.wait_for("genv_processes_total", lambda found: found and found[0][1] == 4)
    assert value("genv_process_devices_total", pid=str(a2.pid)) is None
    assert value(used, eid="ea", device="1") is None
    assert value("genv_user_gpu_memory_used_bytes", username=alice.name) == 3 * GI
    stop(monitor)


def test_per_process_series_only_when_asked_for(
    fake_machine, sleeper, genv_popen, prometheus, shared_tmp
):
    processes = [sleeper() for _ in range(3)]
    fake_machine.processes = [{"pid": p.pid, "device": 0} for p in processes]
    fake_machine.write()
    port = free_port()
    monitor = start_monitor(
        genv_popen, port, shared_tmp / "monitor", "--max-process-series", "2"
    )
    prometheus.start({"genv": [f"127.0.0.1:{port}"]})
    prometheus.wait_for("genv_processes_total", lambda found: bool(found))
    assert prometheus.value("genv_processes_total") == 3
    assert prometheus.value("genv_process_series_omitted") == 1
    assert prometheus.query("genv_process_devices_total") == []
    stop(monitor)
