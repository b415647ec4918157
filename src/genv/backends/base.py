"""The one small interface every GPU backend implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from genv.backends.errors import BackendError
from genv.domain.models import DeviceTelemetry, GpuSnapshot

__all__ = ["BackendError", "GpuBackend", "TelemetrySource"]


class GpuBackend(Protocol):
    """Reads the devices and the compute processes on them.

    ``snapshot`` builds the device list from the hardware on every call, so a GPU added or
    removed shows up without any reset. A device or process list that fails is listed in
    ``errors`` and makes the snapshot ``partial`` (what it would have shown is unknown, not
    absent); the others are still reported. Only a failure to read anything raises
    ``BackendError``, whose message is one line.
    """

    name: str

    def snapshot(self, processes: bool = True) -> GpuSnapshot:
        """Devices and, when ``processes`` is true, their compute processes."""
        ...

    def close(self) -> None:
        """Release what the backend holds (NVML handle, files)."""
        ...


@runtime_checkable
class TelemetrySource(Protocol):
    """A backend that can also tell temperature and utilization (every backend here can).

    Kept apart from ``snapshot`` because they cost extra driver calls that only monitors
    want; the enforcer never asks. Never raises: what cannot be read is None, and a device
    that cannot be read at all is left out.
    """

    def telemetry(self) -> tuple[DeviceTelemetry, ...]: ...
