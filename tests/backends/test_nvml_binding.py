"""genv's one path to NVML, against a fake driver in place of the opened library."""

from __future__ import annotations

import ctypes

import pytest

from genv.backends import nvml_binding
from genv.backends.nvml_binding import MAX_RECORDS, NvmlError, NvmlLibrary

from nvml_fakes import (
    ALL_LISTS,
    FUNCTION_NOT_FOUND,
    GI,
    GPU_IS_LOST,
    INSUFFICIENT_SIZE,
    LIBRARY_NOT_FOUND,
    MI,
    NOT_AVAILABLE,
    FakeDriver,
    FakeGpu,
)


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch) -> FakeDriver:
    return FakeDriver().install(monkeypatch)


def opened(driver: FakeDriver) -> tuple[NvmlLibrary, ctypes.c_void_p]:
    library = NvmlLibrary()
    library.init()
    return library, library.device_handle(0)


def test_records_are_those_of_nvml_h() -> None:
    info = nvml_binding._ProcessInfo
    assert ctypes.sizeof(info) == 24
    assert [info.pid.offset, info.usedGpuMemory.offset] == [0, 8]
    assert [info.gpuInstanceId.offset, info.computeInstanceId.offset] == [16, 20]
    assert ctypes.sizeof(nvml_binding._ProcessInfoV1) == 16
    assert ctypes.sizeof(nvml_binding._Memory) == 24


@pytest.mark.parametrize(
    ("present", "used"),
    [
        ({"_v3", "_v2", ""}, "_v3"),
        ({"_v2", ""}, "_v2"),
        ({""}, ""),  # the original 16-byte record
    ],
)
def test_the_newest_process_list_the_driver_has(
    driver: FakeDriver, present: set[str], used: str
) -> None:
    driver.missing = {name for name in ALL_LISTS if name.partition("Processes")[2] not in present}
    driver.gpus = [FakeGpu("GPU-a", compute=[(100, 7 * GI), (101, None)])]
    library, handle = opened(driver)
    for _ in range(2):
        assert library.processes(handle, "Compute", "GPU-a") == [(100, 7 * GI), (101, None)]
    called = {name for name, _, _ in driver.list_calls}
    assert called == {f"nvmlDeviceGetComputeRunningProcesses{used}"}
    # negotiated once: each missing version was looked up once only
    for name in ALL_LISTS:
        if "MPS" not in name:
            assert driver.calls[f"lookup {name}"] <= 1


def test_no_process_list_at_all(driver: FakeDriver) -> None:
    driver.missing = set(ALL_LISTS)
    driver.gpus = [FakeGpu("GPU-a")]
    library, handle = opened(driver)
    with pytest.raises(NvmlError) as raised:
        library.processes(handle, "MPSCompute", "GPU-a")
    assert raised.value.code == FUNCTION_NOT_FOUND


def test_two_calls_first_then_one_sized_from_the_last_answer(driver: FakeDriver) -> None:
    driver.gpus = [FakeGpu("GPU-a", compute=[(10 + i, MI) for i in range(5)])]
    library, handle = opened(driver)
    assert len(library.processes(handle, "Compute", "GPU-a")) == 5
    # the count asked with no buffer, then a buffer with room to spare
    assert [(count, given) for _, count, given in driver.list_calls] == [(0, False), (14, True)]
    driver.list_calls.clear()
    assert len(library.processes(handle, "Compute", "GPU-a")) == 5
    assert len(driver.list_calls) == 1


def test_no_processes_is_one_call(driver: FakeDriver) -> None:
    driver.gpus = [FakeGpu("GPU-a")]
    library, handle = opened(driver)
    assert library.processes(handle, "Compute", "GPU-a") == []
    assert len(driver.list_calls) == 1


def test_a_list_that_grows_between_the_calls(driver: FakeDriver) -> None:
    pids = iter(range(1000, 2000))

    def grow(gpu: FakeGpu, kind: str) -> None:
        assert isinstance(gpu.compute, list)
        if len(gpu.compute) < 60:  # more than the room given each time, three times
            gpu.compute.extend((next(pids), MI) for _ in range(20))

    driver.gpus = [FakeGpu("GPU-a", compute=[(1, MI)], before_list=grow)]
    library, handle = opened(driver)
    found = library.processes(handle, "Compute", "GPU-a")
    assert len(found) == 61
    assert [given for _, _, given in driver.list_calls] == [False, True, True, True]


def test_a_list_that_keeps_growing_is_an_error_not_a_loop(driver: FakeDriver) -> None:
    pids = iter(range(1000, 100000))

    def grow(gpu: FakeGpu, kind: str) -> None:
        assert isinstance(gpu.compute, list)
        gpu.compute.extend((next(pids), MI) for _ in range(len(gpu.compute) + 50))

    driver.gpus = [FakeGpu("GPU-a", before_list=grow)]
    library, handle = opened(driver)
    with pytest.raises(NvmlError) as raised:
        library.processes(handle, "Compute", "GPU-a")
    assert raised.value.code == INSUFFICIENT_SIZE
    assert len(driver.list_calls) == 4


@pytest.mark.parametrize("claimed", [MAX_RECORDS + 1, 2**32 - 1])
def test_a_count_no_machine_has_is_an_error(driver: FakeDriver, claimed: int) -> None:
    driver.gpus = [FakeGpu("GPU-a", claimed=claimed)]
    library, handle = opened(driver)
    with pytest.raises(NvmlError) as raised:
        library.processes(handle, "Compute", "GPU-a")
    assert raised.value.code is None
    assert str(claimed) in str(raised.value)
    assert len(driver.list_calls) == 1  # nothing allocated for it


def test_a_driver_reporting_more_records_than_it_wrote(driver: FakeDriver) -> None:
    driver.gpus = [FakeGpu("GPU-a", compute=[(7, MI)], overcount=2**32 - 1)]
    library, handle = opened(driver)
    # only the buffer is read; the zeroed records beyond are garbage pids, dropped
    assert library.processes(handle, "Compute", "GPU-a") == [(7, MI)]


def test_garbage_pids_and_not_available_memory(driver: FakeDriver) -> None:
    driver.gpus = [
        FakeGpu("GPU-a", compute=[(0, 5), (4294967295, 5), (200, NOT_AVAILABLE), (201, MI)])
    ]
    library, handle = opened(driver)
    assert library.processes(handle, "Compute", "GPU-a") == [(200, None), (201, MI)]


def test_device_calls(driver: FakeDriver) -> None:
    driver.gpus = [
        FakeGpu("GPU-a", name="Tesla V100-SXM2-32GB", total=32 * GI, used=GI),
        FakeGpu("GPU-b", name=b"\xffbad " + b"x" * 91, total=NOT_AVAILABLE, used=NOT_AVAILABLE),
    ]
    library = NvmlLibrary()
    library.init()
    assert library.device_count() == 2
    first, second = library.device_handle(0), library.device_handle(1)
    assert (library.uuid(first), library.name(first)) == ("GPU-a", "Tesla V100-SXM2-32GB")
    assert library.memory(first) == (32 * GI, GI)
    # 96 bytes, no NUL, not UTF-8: read within the buffer, replaced, never a crash
    assert library.name(second) == "\ufffdbad " + "x" * 91
    assert library.memory(second) == (None, None)
    with pytest.raises(NvmlError) as raised:
        library.device_handle(2)
    assert "nvmlDeviceGetHandleByIndex" in str(raised.value)


def test_a_device_count_no_machine_has(driver: FakeDriver) -> None:
    driver.count_override = 2**32 - 1
    library = NvmlLibrary()
    library.init()
    with pytest.raises(NvmlError, match="4294967295 GPUs"):
        library.device_count()


def test_library_not_found(driver: FakeDriver) -> None:
    driver.library_missing = True
    with pytest.raises(NvmlError) as raised:
        NvmlLibrary().init()
    assert raised.value.code == LIBRARY_NOT_FOUND


def test_a_library_that_does_not_load_is_library_not_found(monkeypatch) -> None:
    """The real ``dlopen`` (no fake driver): a missing library is NVML's own code 12, with
    the dynamic loader's reason, and a later init tries to open it again."""
    monkeypatch.setattr(nvml_binding, "LIBRARY", "libgenv-test-does-not-exist.so.1")
    library = NvmlLibrary()
    for _ in range(2):
        with pytest.raises(NvmlError) as raised:
            library.init()
        assert raised.value.code == LIBRARY_NOT_FOUND
        assert "libgenv-test-does-not-exist.so.1" in str(raised.value)


def test_a_call_before_init_is_uninitialized() -> None:
    with pytest.raises(NvmlError) as raised:
        NvmlLibrary().device_count()
    assert raised.value.code == nvml_binding.ERROR_UNINITIALIZED


def test_errors_read_as_nvml_says_them() -> None:
    assert str(NvmlError(GPU_IS_LOST, "nvmlDeviceGetUUID")) == "GPU is lost (nvmlDeviceGetUUID)"
    assert str(NvmlError(12345, "f")) == "NVML error 12345 (f)"
    assert NvmlError(GPU_IS_LOST, "f").driver_lost
    assert not NvmlError(FUNCTION_NOT_FOUND, "f").driver_lost
