"""Choosing the GPU backend: ``GENV_GPU_BACKEND``, or the best one this machine has.

Opening is cheap: nothing talks to the driver until the first snapshot, and the NVML backend
is one shared instance per process, so NVML is initialised once and kept open.
"""

from __future__ import annotations

import _thread
import os

from genv.backends.errors import BackendError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from genv.backends.base import GpuBackend

ENV_VAR = "GENV_GPU_BACKEND"
BACKENDS = ("nvml", "nvidia-smi", "fake")

_lock = _thread.allocate_lock()  # threading.Lock, without importing threading
_nvml: GpuBackend | None = None


def nvml_library_loads() -> bool:
    """Whether the NVML shared library can be loaded here (a dlopen; no driver call)."""
    from genv.backends import nvml_binding

    try:
        nvml_binding.open_library()
    except OSError:
        return False
    return True


def nvidia_smi_on_path() -> bool:
    import shutil

    return shutil.which("nvidia-smi") is not None


def detect() -> str:
    """The backend to use when none is named: NVML, else nvidia-smi, else a clear error."""
    if nvml_library_loads():
        return "nvml"
    if nvidia_smi_on_path():
        return "nvidia-smi"
    raise BackendError(
        "no NVIDIA driver was found (libnvidia-ml.so.1 does not load and nvidia-smi is not on "
        "PATH): install the driver, or simulate a machine with "
        "GENV_GPU_BACKEND=fake GENV_FAKE_MACHINE=machine.json (see README)"
    )


def open_backend(name: str | None = None) -> GpuBackend:
    """The backend called ``name``, else the one ``GENV_GPU_BACKEND`` names, else detected.

    Raises ``BackendError`` for an unknown name or when no backend is available.
    """
    if name is None:
        name = os.environ.get(ENV_VAR, "").strip() or None
        source = ENV_VAR
    else:
        source = "backend"
    choice = detect() if name is None else name.strip().lower()
    if choice == "nvml":
        return _shared_nvml()
    if choice == "nvidia-smi":
        from genv.backends.nvidia_smi import NvidiaSmiBackend

        return NvidiaSmiBackend()
    if choice == "fake":
        from genv.backends.fake import FakeBackend

        return FakeBackend()
    raise BackendError(f"unknown {source} {name!r}: use one of {', '.join(BACKENDS)}")


def _shared_nvml() -> GpuBackend:
    """One NVML backend per process: NVML stays initialised across callers."""
    global _nvml
    with _lock:
        if _nvml is None:
            from genv.backends.nvml import NvmlBackend

            _nvml = NvmlBackend()
        return _nvml
