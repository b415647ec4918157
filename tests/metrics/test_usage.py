"""The usage view (pure): memory against capacities, membership, users; and the metrics built
from it, with genv 1.4.3's names and label sets and the bound on per-process series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from genv.domain.models import (
    Attachment,
    Device,
    DeviceTelemetry,
    EnvConfig,
    Environment,
    GpuProcess,
    GpuSnapshot,
)
from genv.domain.observation import Membership, ProcessFacts
from genv.domain.state import State, StateProblem
from genv.metrics.families import usage_families
from genv.metrics.source import HostSample
from genv.metrics.usage import build_usage

from promkit import samples_of

GI = 1024**3
ALICE, BOB = 1001, 1002
NAMES = {0: "root", ALICE: "alice", BOB: "bob"}

# genv 1.4.3's metrics and their label names (read off its genv.metrics.specs).
GENV_143 = {
    "genv_is_installed": set(),
    "genv_device_temperature": {"index"},
    "genv_device_utilization": {"index"},
    "genv_device_memory_used_bytes": {"index"},
    "genv_device_memory_total_bytes": {"index"},
    "genv_environments_total": set(),
    "genv_processes_total": set(),
    "genv_attached_devices_total": set(),
    "genv_users_total": set(),
    "genv_environment_processes_total": {"eid"},
    "genv_environment_attached_devices_total": {"eid"},
    "genv_process_devices_total": {"pid", "eid"},
    "genv_process_used_gpu_memory_bytes": {"pid", "eid", "device"},
    "genv_user_environments_total": {"username"},
    "genv_user_processes_total": {"username"},
    "genv_user_attached_devices_total": {"username"},
}


def facts(pid: int, uid: int, eid: str | None) -> ProcessFacts:
    return ProcessFacts(pid, 100 + pid, uid, NAMES.get(uid), "python", eid, exe="/usr/bin/python")


def machine() -> tuple[GpuSnapshot, State, dict[int, ProcessFacts]]:
    """alice: ea on device 0 with 10g reserved (her processes: 3gi there, 1gi on device 1);
    bob: eb on device 1 with no capacity (2gi there) and an impostor claiming ea (512mi on 2);
    root: a process outside environments (1gi on 2); and a process that exited."""
    devices = (
        Device(0, "GPU-0", "A100", 80 * GI, 3 * GI),
        Device(1, "GPU-1", "A100", 80 * GI, 3 * GI),
        Device(2, "GPU-2", "T4", 16 * GI, GI + GI // 2),
    )
    processes = (
        GpuProcess(10, 0, "GPU-0", 3 * GI),
        GpuProcess(11, 1, "GPU-1", 1 * GI),
        GpuProcess(20, 1, "GPU-1", 2 * GI),
        GpuProcess(21, 2, "GPU-2", GI // 2),
        GpuProcess(30, 2, "GPU-2", 1 * GI),
        GpuProcess(99, 0, "GPU-0", 5 * GI),  # exited since the GPUs were read
    )
    ea = Environment("ea", ALICE, "alice", 1.0, EnvConfig(name="train", gpu_memory="10g"))
    eb = Environment("eb", BOB, "bob", 2.0)
    state = State(
        environments=(ea, eb),
        attachments=(
            Attachment(0, "ea", ALICE, 1.0, gpu_memory="10g"),
            Attachment(1, "eb", BOB, 2.0),
        ),
        problems=(StateProblem("/x/state-4242.json", 4242, "is not valid JSON"),),
    )
    seen = {
        10: facts(10, ALICE, "ea"),
        11: facts(11, ALICE, "ea"),
        20: facts(20, BOB, "eb"),
        21: facts(21, BOB, "ea"),
        30: facts(30, 0, None),
    }
    return GpuSnapshot(devices, processes), state, seen


def usage():
    gpus, state, seen = machine()
    telemetry = (DeviceTelemetry(0, 41, 87), DeviceTelemetry(1, 39, None))
    return build_usage(gpus, telemetry, state, seen, NAMES.get, 1000.0)


def test_memory_against_capacity():
    view = usage()
    ea, eb = view.environments
    assert ea.used == ((0, 3 * GI), (1, GI))  # on device 1 too, though not attached there
    assert ea.capacity == ((0, 10 * 10**9),)
    assert eb.capacity == ((1, 80 * GI),)  # no capacity: the whole device
    assert [d.reserved_memory for d in view.devices] == [10 * 10**9, 80 * GI, 0]
    assert [d.environments for d in view.devices] == [1, 1, 0]
    assert view.devices[0].free_memory == 80 * GI - 10 * 10**9
    assert (view.devices[0].temperature, view.devices[0].utilization) == (41, 87)
    assert view.devices[2].temperature is None


def test_membership_and_users():
    view = usage()
    by_pid = {p.pid: p for p in view.processes}
    assert set(by_pid) == {10, 11, 20, 21, 30}  # the exited one is left out
    assert by_pid[21].membership is Membership.IMPOSTOR and by_pid[21].eid is None
    assert by_pid[30].membership is Membership.NO_ENV
    users = {u.username: u for u in view.users}
    assert set(users) == {"alice", "bob", "root", "uid 4242"}
    alice, bob, root = users["alice"], users["bob"], users["root"]
    assert (alice.environments, alice.environment_processes, alice.attached_devices) == (1, 2, 1)
    assert (alice.memory_used, alice.devices_in_use, alice.memory_capacity) == (4 * GI, 2, 10**10)
    assert (bob.processes, bob.environment_processes, bob.memory_used) == (2, 1, 2 * GI + GI // 2)
    assert (root.environments, root.processes, root.memory_used) == (0, 1, GI)
    assert view.problems == (("invalid", "state file /x/state-4242.json is not valid JSON"),)


def render(samples: list[HostSample], **options) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry(auto_describe=False)

    class Families:
        def collect(self):
            return usage_families(samples, **options)

    registry.register(Families())
    return samples_of(generate_latest(registry))


def value(found, name: str, **labels: str) -> float:
    matches = [v for got, v in found[name] if all(got.get(k) == x for k, x in labels.items())]
    assert len(matches) == 1, (name, labels, found.get(name))
    return matches[0]


def test_genv_143_names_and_label_sets():
    found = render([HostSample(None, usage())])
    for name, labels in GENV_143.items():
        assert name in found, name
        assert all(set(got) == labels for got, _ in found[name]), (name, found[name])
    assert value(found, "genv_environments_total") == 2
    assert value(found, "genv_users_total") == 2  # users with environments
    assert value(found, "genv_processes_total") == 5
    assert value(found, "genv_attached_devices_total") == 2
    assert value(found, "genv_environment_processes_total", eid="ea") == 2
    assert value(found, "genv_process_devices_total", pid="21", eid="") == 1
    assert value(found, "genv_process_used_gpu_memory_bytes", pid="11", eid="ea", device="1") == GI
    assert value(found, "genv_user_processes_total", username="bob") == 1
    assert "root" not in {got["username"] for got, _ in found["genv_user_environments_total"]}
    assert value(found, "genv_device_temperature", index="0") == 41
    assert {got["index"] for got, _ in found["genv_device_utilization"]} == {"0"}


def test_what_143_lacked():
    found = render([HostSample(None, usage())])
    assert value(found, "genv_environment_gpu_memory_used_bytes", eid="ea", device="1") == GI
    assert value(found, "genv_environment_gpu_memory_capacity_bytes", eid="eb", device="1") == (
        80 * GI
    )
    assert value(found, "genv_user_gpu_memory_used_bytes", username="root") == GI
    assert value(found, "genv_user_gpu_memory_capacity_bytes", username="alice") == 10**10
    assert value(found, "genv_user_devices_in_use", username="bob") == 2
    assert value(found, "genv_gpu_processes", membership="impostor") == 1
    assert value(found, "genv_state_problems", kind="invalid") == 1
    assert value(found, "genv_user_state_problem", username="uid 4242", kind="invalid") == 1
    assert value(found, "genv_device_memory_reserved_bytes", index="0") == 10**10
    assert value(found, "genv_process_series_omitted") == 0


def test_per_process_series_are_bounded():
    found = render([HostSample(None, usage())], max_process_series=4)
    assert "genv_process_devices_total" not in found  # 5 processes: left out, and said so
    assert "genv_process_used_gpu_memory_bytes" not in found
    assert value(found, "genv_process_series_omitted") == 1
    assert value(found, "genv_processes_total") == 5  # the counts stay


def test_environments_of_several_users_with_one_id_are_added_up():
    gpus, state, seen = machine()
    twin = Environment("ea", BOB, "bob", 3.0)
    state = State(state.environments + (twin,), state.attachments, ())
    seen[20] = facts(20, BOB, "ea")  # both of bob's processes now in his own "ea"
    view = build_usage(gpus, (), state, seen, NAMES.get, 0.0)
    found = render([HostSample(None, view)])
    assert value(found, "genv_environment_processes_total", eid="ea") == 4
    assert {got["username"] for got, _ in found["genv_environment_info"]} == {"alice", "bob"}


def test_a_cluster_source_labels_every_metric_with_its_host():
    found = render(
        [HostSample("gpu1", usage()), HostSample("gpu2", None, error="no answer")], cluster=True
    )
    assert value(found, "genv_host_up", hostname="gpu1") == 1
    assert value(found, "genv_host_up", hostname="gpu2") == 0
    assert value(found, "genv_environments_total", hostname="gpu1") == 2
    for name, entries in found.items():
        assert all("hostname" in labels for labels, _ in entries), name


# -- the view on the wire (genv usage serve --usage) ------------------------------------------


def test_a_hosts_view_crosses_the_wire_unchanged():
    import json

    from genv.metrics.usage_wire import decode_usage, encode_usage

    view = usage()
    line = json.loads(json.dumps(encode_usage(view)))
    assert decode_usage(line) == view


def test_what_a_host_sends_is_checked():
    import json

    import pytest

    from genv.metrics.usage_wire import decode_usage, encode_usage
    from genv.remote.wire import WireError

    good = encode_usage(usage())

    def broken(change) -> dict:
        body = json.loads(json.dumps(good))
        change(body)
        return body

    for change in (
        lambda b: b["processes"][0].__setitem__(4, "friend"),  # no such membership
        lambda b: b["devices"][0].__setitem__(3, -1),  # negative memory
        lambda b: b["users"][0].__setitem__(1, "x" * 10_000),  # a name beyond bounds
        lambda b: b["environments"][0].pop(),  # a field missing
        lambda b: b["problems"].append(["planted", "line"]),  # no such kind
        lambda b: b.__setitem__("time", "now"),
    ):
        with pytest.raises(WireError):
            decode_usage(broken(change))
    with pytest.raises(WireError):
        decode_usage([1, 2])
