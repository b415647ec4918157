"""The NVML backend over a fake driver (C-callable functions the opened library hands out): no GPU.

Every call goes through ``nvml_binding``, the path that runs on GPU servers.
"""

from __future__ import annotations

import pytest

from genv.backends.base import BackendError
from genv.backends.nvml import FIRST_BACKOFF_S, MAX_BACKOFF_S, NvmlBackend

from nvml_fakes import (
    ALL_LISTS,
    DRIVER_NOT_LOADED,
    GI,
    GPU_IS_LOST,
    LIB_RM_VERSION_MISMATCH,
    MI,
    NO_PERMISSION,
    NOT_SUPPORTED,
    UNINITIALIZED,
    UNKNOWN,
    Clock,
    FakeDriver,
    FakeGpu,
)

DRIVER_ERRORS = {
    "Uninitialized": UNINITIALIZED,
    "DriverNotLoaded": DRIVER_NOT_LOADED,
    "LibRmVersionMismatch": LIB_RM_VERSION_MISMATCH,
    "GpuIsLost": GPU_IS_LOST,
    "Unknown": UNKNOWN,
}


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch) -> FakeDriver:
    return FakeDriver().install(monkeypatch)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(clock: Clock) -> NvmlBackend:
    return NvmlBackend(clock=clock)


def pids(snapshot) -> list[tuple[int, int]]:
    return [(p.pid, p.device_index) for p in snapshot.processes]


def test_devices_and_processes(driver: FakeDriver, backend: NvmlBackend) -> None:
    driver.gpus = [
        FakeGpu("GPU-a", used=8 * GI, compute=[(100, 7 * GI), (101, None)]),
        FakeGpu("GPU-b", name="NVIDIA A100-SXM4-80GB"),
    ]
    snapshot = backend.snapshot()
    assert (snapshot.errors, snapshot.partial) == ((), False)
    assert [(d.index, d.uuid, d.name, d.total_memory, d.used_memory) for d in snapshot.devices] == [
        (0, "GPU-a", "NVIDIA H100 80GB HBM3", 80 * GI, 8 * GI),
        (1, "GPU-b", "NVIDIA A100-SXM4-80GB", 80 * GI, 0),
    ]
    assert [(p.pid, p.device_index, p.device_uuid, p.used_memory) for p in snapshot.processes] == [
        (100, 0, "GPU-a", 7 * GI),
        (101, 0, "GPU-a", None),
    ]


def test_processes_false_does_not_list_processes(driver: FakeDriver, backend: NvmlBackend) -> None:
    driver.gpus = [FakeGpu("GPU-a", compute=[(100, GI)])]
    snapshot = backend.snapshot(processes=False)
    assert snapshot.processes == ()
    assert len(snapshot.devices) == 1
    assert driver.list_calls == []


def test_mps_processes_merged_and_deduplicated(driver: FakeDriver, backend: NvmlBackend) -> None:
    driver.gpus = [
        FakeGpu(
            "GPU-a", compute=[(10, None), (11, 3 * MI)], mps=[(10, 5 * MI), (11, None), (12, MI)]
        )
    ]
    snapshot = backend.snapshot()
    assert snapshot.errors == ()
    assert sorted((p.pid, p.used_memory) for p in snapshot.processes) == [
        (10, 5 * MI),
        (11, 3 * MI),
        (12, MI),
    ]


@pytest.mark.parametrize("how", ["not supported", "missing"])
def test_no_mps_is_nothing_missing(driver: FakeDriver, backend: NvmlBackend, how: str) -> None:
    if how == "missing":
        driver.missing = {name for name in ALL_LISTS if "MPS" in name}
        driver.gpus = [FakeGpu("GPU-a", compute=[(10, MI)])]
    else:
        driver.gpus = [FakeGpu("GPU-a", compute=[(10, MI)], mps=NOT_SUPPORTED)]
    snapshot = backend.snapshot()
    assert (snapshot.errors, snapshot.partial) == ((), False)
    assert pids(snapshot) == [(10, 0)]


def test_mps_list_failing_makes_the_view_partial(driver: FakeDriver, backend: NvmlBackend) -> None:
    driver.gpus = [FakeGpu("GPU-a", compute=[(10, MI)], mps=NO_PERMISSION)]
    snapshot = backend.snapshot()
    assert pids(snapshot) == [(10, 0)]
    assert snapshot.partial
    assert len(snapshot.errors) == 1 and "MPS" in snapshot.errors[0]


def test_no_compute_list_at_all_is_partial(driver: FakeDriver, backend: NvmlBackend) -> None:
    driver.missing = set(ALL_LISTS)
    driver.gpus = [FakeGpu("GPU-a", compute=[(10, MI)])]
    snapshot = backend.snapshot()
    assert [d.uuid for d in snapshot.devices] == ["GPU-a"]
    assert snapshot.processes == ()
    assert snapshot.partial
    assert "compute" in snapshot.errors[0] and "Function Not Found" in snapshot.errors[0]


def test_one_device_failing_others_still_reported(driver: FakeDriver, backend: NvmlBackend) -> None:
    driver.gpus = [
        FakeGpu("GPU-a", compute=[(1, MI)]),
        FakeGpu("GPU-b", error=NO_PERMISSION),
        FakeGpu("GPU-c", compute=[(3, MI)]),
    ]
    snapshot = backend.snapshot()
    assert [d.index for d in snapshot.devices] == [0, 2]
    assert pids(snapshot) == [(1, 0), (3, 2)]
    assert snapshot.partial
    assert len(snapshot.errors) == 1
    assert snapshot.errors[0].startswith("device 1:") and "Permissions" in snapshot.errors[0]


def test_memory_not_supported_keeps_the_device_and_loses_nothing(
    driver: FakeDriver, backend: NvmlBackend
) -> None:
    # Unified-memory parts (GB10) do not report framebuffer memory; the device still counts.
    driver.gpus = [
        FakeGpu("GPU-a", name="NVIDIA GB10", memory_error=NOT_SUPPORTED, compute=[(5, None)])
    ]
    snapshot = backend.snapshot()
    assert [(d.uuid, d.total_memory, d.used_memory) for d in snapshot.devices] == [
        ("GPU-a", 0, None)
    ]
    assert pids(snapshot) == [(5, 0)]
    assert not snapshot.partial
    assert len(snapshot.errors) == 1 and "memory not reported" in snapshot.errors[0]
    for _ in range(3):
        backend.snapshot()
    assert (driver.calls["handle"], driver.calls["uuid"]) == (1, 1)  # kept, as for any device


def test_memory_failing_otherwise_loses_the_device(
    driver: FakeDriver, backend: NvmlBackend
) -> None:
    driver.gpus = [FakeGpu("GPU-a", memory_error=NO_PERMISSION), FakeGpu("GPU-b")]
    snapshot = backend.snapshot()
    assert [d.uuid for d in snapshot.devices] == ["GPU-b"]
    assert snapshot.partial and snapshot.errors[0].startswith("device 0:")


def test_a_pid_no_process_can_have_makes_the_view_partial(
    driver: FakeDriver, backend: NvmlBackend
) -> None:
    driver.gpus = [FakeGpu("GPU-a", compute=[(4194305, MI), (7, MI)])]
    snapshot = backend.snapshot()
    assert pids(snapshot) == [(7, 0)]
    assert snapshot.partial and "4194305" in snapshot.errors[0]


def test_device_count_change_between_snapshots(driver: FakeDriver, backend: NvmlBackend) -> None:
    driver.gpus = [FakeGpu("GPU-a")]
    assert [d.uuid for d in backend.snapshot().devices] == ["GPU-a"]
    driver.gpus.append(FakeGpu("GPU-b"))
    assert [d.uuid for d in backend.snapshot().devices] == ["GPU-a", "GPU-b"]
    driver.gpus.pop(0)
    snapshot = backend.snapshot()
    assert [(d.index, d.uuid) for d in snapshot.devices] == [(0, "GPU-b")]


def test_init_once_kept_open_and_name_cached_by_uuid(
    driver: FakeDriver, backend: NvmlBackend
) -> None:
    driver.gpus = [FakeGpu("GPU-a", compute=[(5, MI)]), FakeGpu("GPU-b")]
    for _ in range(3):
        backend.snapshot()
    assert (driver.calls["init"], driver.calls["count"], driver.calls["name"]) == (1, 3, 2)
    assert driver.calls["shutdown"] == 0
    backend.close()
    assert driver.calls["shutdown"] == 1
    backend.close()
    assert driver.calls["shutdown"] == 1
    backend.snapshot()  # usable again after close: re-initialises lazily, without waiting
    assert driver.calls["init"] == 2


def test_construction_does_not_touch_nvml(driver: FakeDriver, clock: Clock) -> None:
    NvmlBackend(clock=clock).close()
    assert driver.calls == {}


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (DRIVER_NOT_LOADED, "not loaded"),
        (LIB_RM_VERSION_MISMATCH, "reboot"),
        (NO_PERMISSION, "permission"),
        (UNKNOWN, "Unknown Error"),
    ],
)
def test_init_failure_is_one_line_and_tried_again_after_a_pause(
    driver: FakeDriver, backend: NvmlBackend, clock: Clock, code: int, words: str
) -> None:
    driver.init_error = code
    with pytest.raises(BackendError) as raised:
        backend.snapshot()
    message = str(raised.value)
    assert "\n" not in message and words in message
    driver.init_error = None
    driver.gpus = [FakeGpu("GPU-a")]
    # not in a loop: the next attempt waits for the back-off
    with pytest.raises(BackendError, match="tried again in 1 s"):
        backend.snapshot()
    assert driver.calls["init"] == 1
    clock.advance(FIRST_BACKOFF_S)
    assert len(backend.snapshot().devices) == 1
    assert driver.calls["init"] == 2


def test_library_missing(driver: FakeDriver, backend: NvmlBackend) -> None:
    driver.library_missing = True
    with pytest.raises(BackendError, match="libnvidia-ml.so.1 was not found"):
        backend.snapshot()


@pytest.mark.parametrize("kind", sorted(DRIVER_ERRORS))
def test_driver_lost_then_back(
    driver: FakeDriver, backend: NvmlBackend, clock: Clock, kind: str
) -> None:
    """The driver goes away under an open NVML (reload, update): unavailable, shut down,
    opened again after the back-off, and reading again without a restart."""
    driver.gpus = [FakeGpu("GPU-a", compute=[(5, MI)])]
    assert pids(backend.snapshot()) == [(5, 0)]
    driver.count_error = DRIVER_ERRORS[kind]
    with pytest.raises(BackendError) as raised:
        backend.snapshot()
    assert "\n" not in str(raised.value)
    assert driver.calls["shutdown"] == 1
    # the driver is back (reloaded), but nvmlInit waits for the back-off: no busy loop
    driver.count_error = None
    with pytest.raises(BackendError, match="tried again"):
        backend.snapshot()
    assert driver.calls["init"] == 1
    clock.advance(FIRST_BACKOFF_S)
    snapshot = backend.snapshot()
    assert pids(snapshot) == [(5, 0)] and not snapshot.partial
    assert driver.calls["init"] == 2


@pytest.mark.parametrize("kind", sorted(DRIVER_ERRORS))
def test_every_device_lost_is_unavailable(
    driver: FakeDriver, backend: NvmlBackend, clock: Clock, kind: str
) -> None:
    driver.gpus = [
        FakeGpu("GPU-a", error=DRIVER_ERRORS[kind]),
        FakeGpu("GPU-b", error=DRIVER_ERRORS[kind]),
    ]
    with pytest.raises(BackendError, match="cannot read any of the 2 GPU"):
        backend.snapshot()
    assert driver.calls["shutdown"] == 1
    for gpu in driver.gpus:
        gpu.error = None
    clock.advance(FIRST_BACKOFF_S)
    assert len(backend.snapshot().devices) == 2


@pytest.mark.parametrize("kind", sorted(DRIVER_ERRORS))
def test_one_device_lost_is_partial_and_nvml_is_opened_again_later(
    driver: FakeDriver, backend: NvmlBackend, clock: Clock, kind: str
) -> None:
    driver.gpus = [FakeGpu("GPU-a", compute=[(1, MI)]), FakeGpu("GPU-b", compute=[(2, MI)])]
    backend.snapshot()
    driver.gpus[1].error = DRIVER_ERRORS[kind]
    snapshot = backend.snapshot()
    assert snapshot.partial and pids(snapshot) == [(1, 0)]
    assert snapshot.errors[0].startswith("device 1:")
    # the readable device keeps being read while the back-off runs; NVML stays open
    assert backend.snapshot().partial
    assert (driver.calls["init"], driver.calls["shutdown"]) == (1, 0)
    clock.advance(FIRST_BACKOFF_S)
    driver.gpus[1].error = None
    snapshot = backend.snapshot()  # NVML shut down and opened again first
    assert (driver.calls["init"], driver.calls["shutdown"]) == (2, 1)
    assert not snapshot.partial and pids(snapshot) == [(1, 0), (2, 1)]


def test_a_process_list_lost_is_partial_and_reopens(
    driver: FakeDriver, backend: NvmlBackend, clock: Clock
) -> None:
    driver.gpus = [FakeGpu("GPU-a", compute=GPU_IS_LOST)]
    snapshot = backend.snapshot()
    assert snapshot.partial and [d.uuid for d in snapshot.devices] == ["GPU-a"]
    driver.gpus[0].compute = [(3, MI)]
    clock.advance(FIRST_BACKOFF_S)
    assert pids(backend.snapshot()) == [(3, 0)]
    assert driver.calls["init"] == 2


def test_back_off_doubles_up_to_its_limit_and_resets(
    driver: FakeDriver, backend: NvmlBackend, clock: Clock
) -> None:
    driver.init_error = DRIVER_NOT_LOADED
    waits = []
    for _ in range(8):
        with pytest.raises(BackendError):
            backend.snapshot()
        waits.append(backend._retry_at - clock.now)
        clock.advance(waits[-1])
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]
    assert MAX_BACKOFF_S == 30
    assert driver.calls["init"] == 8
    driver.init_error = None
    driver.gpus = [FakeGpu("GPU-a")]
    backend.snapshot()
    driver.count_error = UNKNOWN
    with pytest.raises(BackendError):
        backend.snapshot()
    assert backend._retry_at - clock.now == FIRST_BACKOFF_S  # a good snapshot reset it


def test_function_missing_for_the_device_list(driver: FakeDriver, backend: NvmlBackend) -> None:
    driver.missing = {"nvmlDeviceGetUUID"}
    driver.gpus = [FakeGpu("GPU-a")]
    with pytest.raises(BackendError) as raised:
        backend.snapshot()
    assert "nvmlDeviceGetUUID" in str(raised.value)
    assert driver.calls["shutdown"] == 0  # not a driver loss: NVML stays open


def test_a_device_count_no_machine_has_is_one_line(
    driver: FakeDriver, backend: NvmlBackend
) -> None:
    driver.count_override = 2**32 - 1
    with pytest.raises(BackendError) as raised:
        backend.snapshot()
    assert "4294967295 GPUs reported" in str(raised.value) and "\n" not in str(raised.value)


# -- what did not change is handed back as it was ---------------------------------------------


def test_an_unchanged_machine_gives_back_the_very_same_snapshot(
    driver: FakeDriver, backend: NvmlBackend
) -> None:
    driver.gpus = [FakeGpu("GPU-a", compute=[(100, GI)]), FakeGpu("GPU-b", compute=[(101, MI)])]
    first = backend.snapshot()
    assert backend.snapshot() is first


def test_one_process_changing_rebuilds_only_its_device(
    driver: FakeDriver, backend: NvmlBackend
) -> None:
    driver.gpus = [
        FakeGpu("GPU-a", compute=[(100, GI), (102, GI)]),
        FakeGpu("GPU-b", compute=[(101, MI)]),
    ]
    first = backend.snapshot()
    driver.gpus[0].compute = [(100, 2 * GI), (102, GI)]
    second = backend.snapshot()
    assert second is not first
    assert [(p.pid, p.used_memory) for p in second.processes] == [
        (100, 2 * GI),
        (102, GI),
        (101, MI),
    ]
    old = {p.pid: p for p in first.processes}
    new = {p.pid: p for p in second.processes}
    assert new[100] is not old[100]
    assert new[102] is old[102] and new[101] is old[101]  # the same objects: unchanged
    assert second.devices[1] is first.devices[1]


def test_a_device_whose_memory_changed_is_a_new_device(
    driver: FakeDriver, backend: NvmlBackend
) -> None:
    driver.gpus = [FakeGpu("GPU-a", used=GI)]
    first = backend.snapshot()
    driver.gpus[0].used = 2 * GI
    second = backend.snapshot()
    assert second is not first and second.devices[0].used_memory == 2 * GI


def test_handles_are_looked_up_once_until_the_count_changes_or_the_device_errors(
    driver: FakeDriver, backend: NvmlBackend
) -> None:
    driver.gpus = [FakeGpu("GPU-a", compute=[(100, GI)]), FakeGpu("GPU-b")]
    for _ in range(3):
        backend.snapshot()
    assert driver.calls["handle"] == 2  # a steady daemon asks once per device
    driver.gpus[1].error = UNKNOWN
    assert backend.snapshot().partial
    driver.gpus[1].error = None
    assert not backend.snapshot().partial
    assert driver.calls["handle"] == 2 + 1  # device 1 looked up again after its error
    driver.gpus.append(FakeGpu("GPU-c"))
    snapshot = backend.snapshot()
    assert [d.uuid for d in snapshot.devices] == ["GPU-a", "GPU-b", "GPU-c"]
    assert driver.calls["handle"] == 3 + 3  # another count: every index looked up again


def test_a_device_replaced_at_the_same_index_is_lost_then_read_afresh(
    driver: FakeDriver, backend: NvmlBackend, clock: Clock
) -> None:
    """A handle names one physical device (so its uuid is read once): when another stands at
    its index, calls on the old handle fail (GPU_IS_LOST), nothing is enforced on what was
    not read, and NVML opened again reads the new device."""
    driver.gpus = [FakeGpu("GPU-a", compute=[(100, GI)]), FakeGpu("GPU-c")]
    backend.snapshot()
    backend.snapshot()
    assert driver.calls["uuid"] == 2  # once per device, not per snapshot
    driver.gpus[0] = FakeGpu("GPU-b", compute=[(100, GI)])
    second = backend.snapshot()
    assert second.partial and [d.uuid for d in second.devices] == ["GPU-c"]
    assert "GPU is lost" in second.errors[0]
    clock.advance(FIRST_BACKOFF_S)
    third = backend.snapshot()
    assert not third.partial
    assert [(p.pid, p.device_uuid) for p in third.processes] == [(100, "GPU-b")]
    assert [d.uuid for d in third.devices] == ["GPU-b", "GPU-c"]


def test_a_snapshot_with_errors_is_never_reused(driver: FakeDriver, backend: NvmlBackend) -> None:
    driver.gpus = [FakeGpu("GPU-a", compute=[(100, GI)]), FakeGpu("GPU-b", error=UNKNOWN)]
    first = backend.snapshot()
    assert first.partial
    second = backend.snapshot()
    assert second is not first and second.partial
    driver.gpus[1].error = None
    third = backend.snapshot()
    assert not third.partial and len(third.devices) == 2
