"""GPU backends: NVML in-process, nvidia-smi's CSV queries, or a simulated machine."""

from __future__ import annotations

from genv.backends.choose import open_backend
from genv.backends.errors import BackendError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from genv.backends.base import GpuBackend

__all__ = ["BackendError", "GpuBackend", "open_backend"]


def __getattr__(name: str) -> object:
    """``GpuBackend`` (a typing.Protocol) is imported when asked for: using a backend does
    not need it, and typing takes milliseconds to import."""
    if name == "GpuBackend":
        from genv.backends.base import GpuBackend

        return GpuBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
