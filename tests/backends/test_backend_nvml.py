"""The NVML backend against a stubbed ``pynvml``: no GPU, no driver."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from genv.backends.base import BackendError
from genv.backends.nvml import NvmlBackend

GI = 1024**3
MI = 1024**2


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    total: int = 80 * GI
    used: int = 0
    compute: list[tuple[int, int | None]] = field(default_factory=list)
    mps: list[tuple[int, int | None]] | BaseException = field(
        default_factory=lambda: pynvml.NVMLError_NotSupported()
    )
    broken: BaseException | None = None
    memory_error: BaseException | None = None


class FakeNvml:
    """The pynvml calls the backend makes, answered from a list of ``FakeGpu``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gpus: list[FakeGpu] = []
        self.init_error: BaseException | None = None
        self.count_error: BaseException | None = None
        self.calls: dict[str, int] = {}
        self.bytes_strings = False
        for name in dir(self):
            if name.startswith("nvml"):
                monkeypatch.setattr(pynvml, name, getattr(self, name))

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _gpu(self, handle: Any) -> FakeGpu:
        gpu = self.gpus[handle]
        if gpu.broken is not None:
            raise gpu.broken
        return gpu

    def _str(self, text: str) -> str | bytes:
        return text.encode() if self.bytes_strings else text

    @staticmethod
    def _infos(entries: list[tuple[int, int | None]]) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in entries]

    def nvmlInit(self) -> None:
        self._count("init")
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self._count("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        self._count("count")
        if self.count_error is not None:
            raise self.count_error
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index >= len(self.gpus):
            raise pynvml.NVMLError_InvalidArgument()
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str | bytes:
        return self._str(self._gpu(handle).uuid)

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        self._count("name")
        return self._str(self._gpu(handle).name)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        gpu = self._gpu(handle)
        if isinstance(gpu.memory_error, BaseException):
            raise gpu.memory_error
        return SimpleNamespace(total=gpu.total, used=gpu.used, free=gpu.total - gpu.used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        return self._infos(self._gpu(handle).compute)

    def nvmlDeviceGetMPSComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        mps = self._gpu(handle).mps
        if isinstance(mps, BaseException):
            raise mps
        return self._infos(mps)

    # The versioned names the backend falls back to answer the same way.
    nvmlDeviceGetComputeRunningProcesses_v2 = nvmlDeviceGetComputeRunningProcesses
    nvmlDeviceGetMPSComputeRunningProcesses_v2 = nvmlDeviceGetMPSComputeRunningProcesses


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    return FakeNvml(monkeypatch)


def test_devices_and_processes(nvml: FakeNvml) -> None:
    nvml.gpus = [
        FakeGpu("GPU-a", used=8 * GI, compute=[(100, 7 * GI), (101, None)]),
        FakeGpu("GPU-b", name="NVIDIA A100-SXM4-80GB"),
    ]
    snapshot = NvmlBackend().snapshot()
    assert snapshot.errors == ()
    assert [(d.index, d.uuid, d.name, d.total_memory, d.used_memory) for d in snapshot.devices] == [
        (0, "GPU-a", "NVIDIA H100 80GB HBM3", 80 * GI, 8 * GI),
        (1, "GPU-b", "NVIDIA A100-SXM4-80GB", 80 * GI, 0),
    ]
    assert [(p.pid, p.device_index, p.device_uuid, p.used_memory) for p in snapshot.processes] == [
        (100, 0, "GPU-a", 7 * GI),
        (101, 0, "GPU-a", None),
    ]


def test_processes_false_does_not_list_processes(nvml: FakeNvml) -> None:
    nvml.gpus = [FakeGpu("GPU-a", compute=[(100, GI)])]
    snapshot = NvmlBackend().snapshot(processes=False)
    assert snapshot.processes == ()
    assert len(snapshot.devices) == 1


def test_garbage_pids_and_not_available_memory(nvml: FakeNvml) -> None:
    nvml.gpus = [FakeGpu("GPU-a", compute=[(0, 5), (4294967295, 5), (200, 2**64 - 1), (201, MI)])]
    snapshot = NvmlBackend().snapshot()
    assert [(p.pid, p.used_memory) for p in snapshot.processes] == [(200, None), (201, MI)]


def test_mps_processes_merged_and_deduplicated(nvml: FakeNvml) -> None:
    nvml.gpus = [
        FakeGpu(
            "GPU-a", compute=[(10, None), (11, 3 * MI)], mps=[(10, 5 * MI), (11, None), (12, MI)]
        )
    ]
    snapshot = NvmlBackend().snapshot()
    assert snapshot.errors == ()
    assert sorted((p.pid, p.used_memory) for p in snapshot.processes) == [
        (10, 5 * MI),
        (11, 3 * MI),
        (12, MI),
    ]


@pytest.mark.parametrize("error", ["NVMLError_NotSupported", "NVMLError_FunctionNotFound"])
def test_mps_unsupported_is_ignored(nvml: FakeNvml, error: str) -> None:
    nvml.gpus = [FakeGpu("GPU-a", compute=[(10, MI)], mps=getattr(pynvml, error)())]
    snapshot = NvmlBackend().snapshot()
    assert snapshot.errors == ()
    assert [p.pid for p in snapshot.processes] == [10]


def test_mps_other_error_is_reported(nvml: FakeNvml) -> None:
    nvml.gpus = [FakeGpu("GPU-a", compute=[(10, MI)], mps=pynvml.NVMLError_Unknown())]
    snapshot = NvmlBackend().snapshot()
    assert [p.pid for p in snapshot.processes] == [10]
    assert len(snapshot.errors) == 1 and "MPS" in snapshot.errors[0]


def test_compute_query_falls_back_to_v2_on_older_driver(
    nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    def mismatch(handle: Any) -> None:
        raise pynvml.NVMLLibraryMismatchError("v3 is not in this driver")

    calls = []

    def v2(handle: int) -> list[SimpleNamespace]:
        calls.append(handle)
        return [SimpleNamespace(pid=42, usedGpuMemory=MI)]

    monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", mismatch)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses_v2", v2)
    nvml.gpus = [FakeGpu("GPU-a"), FakeGpu("GPU-b")]
    backend = NvmlBackend()
    for _ in range(2):
        snapshot = backend.snapshot()
        assert snapshot.errors == ()
        assert [(p.pid, p.device_index) for p in snapshot.processes] == [(42, 0), (42, 1)]
    assert calls == [0, 1, 0, 1]


def test_one_device_erroring_others_still_reported(nvml: FakeNvml) -> None:
    nvml.gpus = [
        FakeGpu("GPU-a", compute=[(1, MI)]),
        FakeGpu("GPU-b", broken=pynvml.NVMLError_GpuIsLost()),
        FakeGpu("GPU-c", compute=[(3, MI)]),
    ]
    snapshot = NvmlBackend().snapshot()
    assert [d.index for d in snapshot.devices] == [0, 2]
    assert [p.pid for p in snapshot.processes] == [1, 3]
    assert len(snapshot.errors) == 1
    assert snapshot.errors[0].startswith("device 1:") and "GPU is lost" in snapshot.errors[0]


def test_memory_not_supported_keeps_the_device(nvml: FakeNvml) -> None:
    # Unified-memory parts (GB10) do not report framebuffer memory; the device still counts.
    nvml.gpus = [
        FakeGpu("GPU-a", name="NVIDIA GB10", memory_error=pynvml.NVMLError_NotSupported()),
        FakeGpu("GPU-b", memory_error=pynvml.NVMLError_Unknown()),
    ]
    snapshot = NvmlBackend().snapshot()
    assert [(d.uuid, d.total_memory, d.used_memory) for d in snapshot.devices] == [
        ("GPU-a", 0, None)
    ]
    assert len(snapshot.errors) == 2
    assert snapshot.errors[0].startswith("device 0:") and "memory" in snapshot.errors[0]
    assert snapshot.errors[1].startswith("device 1:")


def test_device_count_change_between_snapshots(nvml: FakeNvml) -> None:
    nvml.gpus = [FakeGpu("GPU-a")]
    backend = NvmlBackend()
    assert [d.uuid for d in backend.snapshot().devices] == ["GPU-a"]
    nvml.gpus.append(FakeGpu("GPU-b"))
    assert [d.uuid for d in backend.snapshot().devices] == ["GPU-a", "GPU-b"]
    nvml.gpus.pop(0)
    snapshot = backend.snapshot()
    assert [(d.index, d.uuid) for d in snapshot.devices] == [(0, "GPU-b")]


def test_init_once_and_name_cached_by_uuid(nvml: FakeNvml) -> None:
    nvml.gpus = [FakeGpu("GPU-a"), FakeGpu("GPU-b")]
    backend = NvmlBackend()
    for _ in range(3):
        backend.snapshot()
    assert nvml.calls["init"] == 1
    assert nvml.calls["count"] == 3
    assert nvml.calls["name"] == 2
    backend.close()
    assert nvml.calls["shutdown"] == 1
    backend.close()
    assert nvml.calls["shutdown"] == 1
    backend.snapshot()  # usable again after close: re-initialises lazily
    assert nvml.calls["init"] == 2


def test_construction_does_not_touch_nvml(nvml: FakeNvml) -> None:
    NvmlBackend().close()
    assert nvml.calls == {}


def test_bytes_from_older_bindings(nvml: FakeNvml) -> None:
    nvml.bytes_strings = True
    nvml.gpus = [FakeGpu("GPU-a", name="Tesla V100-SXM2-32GB")]
    (device,) = NvmlBackend().snapshot().devices
    assert (device.uuid, device.name) == ("GPU-a", "Tesla V100-SXM2-32GB")


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (pynvml.NVMLError_LibraryNotFound(), "libnvidia-ml.so.1"),
        (pynvml.NVMLError_DriverNotLoaded(), "not loaded"),
        (pynvml.NVMLError_LibRmVersionMismatch(), "reboot"),
        (pynvml.NVMLError_NoPermission(), "permission"),
        (pynvml.NVMLError_Unknown(), "Unknown Error"),
        (OSError("boom"), "boom"),
    ],
)
def test_init_failure_is_one_line_backend_error(
    nvml: FakeNvml, error: BaseException, words: str
) -> None:
    nvml.init_error = error
    backend = NvmlBackend()
    with pytest.raises(BackendError) as raised:
        backend.snapshot()
    message = str(raised.value)
    assert "\n" not in message and words in message
    # Not marked initialised: a later call tries again (the driver may have been loaded).
    nvml.init_error = None
    nvml.gpus = [FakeGpu("GPU-a")]
    assert len(backend.snapshot().devices) == 1


def test_count_failure_is_backend_error(nvml: FakeNvml) -> None:
    nvml.count_error = pynvml.NVMLError_Unknown()
    with pytest.raises(BackendError, match="cannot count"):
        NvmlBackend().snapshot()
