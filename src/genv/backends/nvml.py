"""The preferred backend: NVML in-process through NVIDIA's binding (``pynvml``).

NVML is initialised once, lazily, and kept open: re-initialising per query costs ten times
more. Importing this module never touches the driver, so it works on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from genv.backends.base import BackendError
from genv.domain.models import Device, GpuProcess, GpuSnapshot

try:
    import pynvml
except ImportError:  # pragma: no cover - nvidia-ml-py is a declared dependency
    pynvml = None  # type: ignore[assignment]

# Pids a binding that does not match the driver reports; never act on them.
GARBAGE_PIDS = frozenset({0, 4294967295})
# NVML's "value not available" for a process's memory (older bindings pass it through).
_NOT_AVAILABLE = 2**64 - 1

_FAKE_HINT = (
    "or set GENV_GPU_BACKEND=fake GENV_FAKE_MACHINE=machine.json to simulate one (see README)"
)


class _NoVariant(Exception):
    """No version of a process query exists in this binding/driver pair."""


def _text(value: Any) -> str:
    """Strings from NVML: older bindings return bytes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _error_class(name: str) -> type[BaseException] | None:
    return getattr(pynvml, name, None) if pynvml is not None else None


def _is(error: BaseException, *names: str) -> bool:
    """Whether ``error`` is one of pynvml's error classes (missing in old bindings = no)."""
    for name in names:
        cls = _error_class(name)
        if cls is not None and isinstance(error, cls):
            return True
    return False


def init_error_message(error: BaseException) -> str:
    """One line for a failed ``nvmlInit``: what is wrong and what to do."""
    if _is(error, "NVMLError_LibraryNotFound"):
        return (
            "the NVIDIA driver library libnvidia-ml.so.1 was not found: install the NVIDIA "
            f"driver, {_FAKE_HINT}"
        )
    if _is(error, "NVMLError_DriverNotLoaded"):
        return (
            "the NVIDIA kernel driver is not loaded: load it (modprobe nvidia, or reboot), "
            f"{_FAKE_HINT}"
        )
    if _is(error, "NVMLError_LibRmVersionMismatch"):
        return (
            "the NVIDIA driver library and kernel module versions differ (driver updated "
            "without a reboot?): reboot or reload the nvidia kernel module"
        )
    if _is(error, "NVMLError_NoPermission"):
        return "no permission to use the NVIDIA driver (NVML): check access to /dev/nvidia*"
    return (
        f"cannot initialise NVML ({_text(error) or type(error).__name__}): check the driver "
        "with nvidia-smi, or try GENV_GPU_BACKEND=nvidia-smi"
    )


class NvmlBackend:
    """Reads devices and compute processes through NVML, kept open until ``close``.

    Static values (the name) are cached by UUID; everything else is read on every snapshot,
    and the device list is rebuilt from ``nvmlDeviceGetCount`` each time.
    """

    name = "nvml"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._initialized = False
        self._names: dict[str, str] = {}
        # Which binding function answers a process query, once found (older drivers lack _v3).
        self._process_calls: dict[str, Callable[[Any], Any] | None] = {}

    def _ensure_init(self) -> None:
        """``nvmlInit`` on first use only; a failure is a ``BackendError`` with a hint."""
        if self._initialized:
            return
        with self._lock:
            if self._initialized:
                return
            if pynvml is None:
                raise BackendError(
                    "the nvidia-ml-py package (pynvml) is not installed: pip install nvidia-ml-py"
                )
            try:
                pynvml.nvmlInit()
            except Exception as error:  # the binding raises NVMLError and plain OSError
                raise BackendError(init_error_message(error)) from None
            self._initialized = True

    def snapshot(self, processes: bool = True) -> GpuSnapshot:
        """Every device NVML counts now; a device that fails goes to ``errors``."""
        self._ensure_init()
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as error:
            raise BackendError(
                f"NVML cannot count the GPUs ({_text(error)}): check the driver with nvidia-smi"
            ) from None
        devices: list[Device] = []
        found: list[GpuProcess] = []
        errors: list[str] = []
        for index in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
                name = self._names.get(uuid)
                if name is None:
                    name = self._names[uuid] = _text(pynvml.nvmlDeviceGetName(handle))
            except pynvml.NVMLError as error:
                errors.append(f"device {index}: {_text(error)}")
                continue
            try:
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                total, used = int(memory.total), int(memory.used)
            except pynvml.NVMLError as error:
                if not _is(error, "NVMLError_NotSupported"):
                    errors.append(f"device {index}: {_text(error)}")
                    continue
                # Unified-memory parts (GB10) have no framebuffer figures; the device still
                # exists and runs processes, so keep it, as nvidia-smi's [N/A] does.
                errors.append(f"device {index}: memory not reported ({_text(error)})")
                total, used = 0, None
            devices.append(Device(index, uuid, name, total, used))
            if processes:
                found.extend(self._processes(handle, index, uuid, errors))
        return GpuSnapshot(tuple(devices), tuple(found), tuple(errors))

    def _processes(self, handle: Any, index: int, uuid: str, errors: list[str]) -> list[GpuProcess]:
        """Compute and MPS processes of one device, garbage pids dropped, each pid once."""
        by_pid: dict[int, GpuProcess] = {}
        for kind in ("Compute", "MPSCompute"):
            try:
                infos = self._query(kind, handle)
            except Exception as error:  # NVMLError, or a binding that does not match the driver
                optional = kind == "MPSCompute" and (
                    isinstance(error, _NoVariant)
                    or _is(error, "NVMLError_NotSupported", "NVMLError_FunctionNotFound")
                )
                if not optional:
                    label = "MPS" if kind == "MPSCompute" else "compute"
                    errors.append(f"device {index}: cannot list {label} processes: {_text(error)}")
                continue
            for info in infos:
                pid = int(getattr(info, "pid", 0) or 0)
                if pid in GARBAGE_PIDS or pid < 0:
                    continue
                used = getattr(info, "usedGpuMemory", None)
                used = None if used is None or int(used) >= _NOT_AVAILABLE else int(used)
                previous = by_pid.get(pid)
                if previous is not None and (used is None or previous.used_memory is not None):
                    continue
                by_pid[pid] = GpuProcess(pid, index, uuid, used)
        return list(by_pid.values())

    def _query(self, kind: str, handle: Any) -> Any:
        """Call ``nvmlDeviceGet<kind>RunningProcesses``, falling back to ``_v2`` for old drivers.

        The variant that answered is remembered. ``_NoVariant`` means the driver has none.
        """
        call = self._process_calls.get(kind)
        if call is not None:
            return call(handle)
        base = f"nvmlDeviceGet{kind}RunningProcesses"
        for name in (base, f"{base}_v2"):
            function = getattr(pynvml, name, None)
            if function is None:
                continue
            try:
                result = function(handle)
            except Exception as error:
                if _is(error, "NVMLError_FunctionNotFound", "NVMLLibraryMismatchError"):
                    continue
                raise
            self._process_calls[kind] = function
            return result
        raise _NoVariant(f"the driver has no {base}")

    def close(self) -> None:
        """``nvmlShutdown`` if this object initialised NVML; a later snapshot re-opens it."""
        with self._lock:
            if not self._initialized:
                return
            self._initialized = False
            self._names.clear()
            self._process_calls.clear()
            # Nothing useful to tell the user when shutdown fails.
            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()
