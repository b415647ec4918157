"""The one small interface every GPU backend implements."""

from __future__ import annotations

from typing import Protocol

from genv.domain.models import GpuSnapshot
from genv.errors import GenvError


class BackendError(GenvError, RuntimeError):
    """The GPUs cannot be read at all (no driver, no library, a bad simulated machine).

    The message is one line for the user: what is wrong and what to do.
    """


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
