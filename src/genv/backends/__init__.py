"""GPU backends: NVML in-process, nvidia-smi's CSV queries, or a simulated machine."""

from genv.backends.base import BackendError, GpuBackend
from genv.backends.choose import open_backend

__all__ = ["BackendError", "GpuBackend", "open_backend"]
