"""Temperature and utilization, which only monitors read: through NVML (a fake driver under
genv's binding), nvidia-smi's CSV, and the simulated machine's optional device fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from genv.backends.base import BackendError, TelemetrySource
from genv.backends.fake import FakeBackend
from genv.backends.machine_file import write_machine
from genv.backends.nvidia_smi import parse_telemetry
from genv.backends.nvml import NvmlBackend
from genv.domain.models import DeviceTelemetry

from nvml_fakes import FakeDriver, FakeGpu


def test_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    driver = FakeDriver().install(monkeypatch)
    driver.gpus = [FakeGpu("GPU-a", temperature=61, utilization=97), FakeGpu("GPU-b")]
    backend = NvmlBackend()
    assert isinstance(backend, TelemetrySource)
    backend.snapshot()
    assert driver.calls["temperature"] == driver.calls["utilization"] == 0  # the enforcer's
    assert backend.telemetry() == (DeviceTelemetry(0, 61, 97), DeviceTelemetry(1, None, None))


def test_nvml_without_a_driver_tells_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    driver = FakeDriver().install(monkeypatch)
    driver.library_missing = True
    assert NvmlBackend().telemetry() == ()


def test_nvidia_smi_csv() -> None:
    text = "0, 45, 87\n1, [N/A], [N/A]\n2, 999, 101\nnonsense\n"
    assert parse_telemetry(text) == (
        DeviceTelemetry(0, 45, 87),
        DeviceTelemetry(1, None, None),
        DeviceTelemetry(2, None, None),  # impossible readings are no readings
    )


def test_simulated_machine(tmp_path: Path) -> None:
    path = tmp_path / "machine.json"
    write_machine(path, [{"total_memory": "80gi", "temperature": 40, "utilization": 3},
                         {"total_memory": "16gi"}])
    assert FakeBackend(path).telemetry() == (
        DeviceTelemetry(0, 40, 3), DeviceTelemetry(1, None, None)
    )
    with pytest.raises(ValueError, match="utilization must be at most 100"):
        write_machine(path, [{"total_memory": "80gi", "utilization": 150}])
    path.write_text("{")
    with pytest.raises(BackendError):
        FakeBackend(path).snapshot()
    assert FakeBackend(path).telemetry() == ()
