"""The preferred backend: NVML in-process through NVIDIA's binding (``pynvml``).

NVML is initialised once, lazily, and kept open: re-initialising per query costs ten times
more. Importing this module never touches the driver, so it works on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import struct
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


class _ProcessRecord(ctypes.Structure):
    """``nvmlProcessInfo_t`` of nvml.h: the record of the ``_v2`` and ``_v3`` process lists."""

    _fields_ = [
        ("pid", ctypes.c_uint),
        ("usedGpuMemory", ctypes.c_ulonglong),
        ("gpuInstanceId", ctypes.c_uint),
        ("computeInstanceId", ctypes.c_uint),
    ]


_RECORD = struct.Struct("@IQII")  # the same record, unpacked in bulk
_DIRECT_CALLS = {
    "Compute": "nvmlDeviceGetComputeRunningProcesses_v3",
    "MPSCompute": "nvmlDeviceGetMPSComputeRunningProcesses_v3",
}
_NVML_SUCCESS = 0
_NVML_ERROR_INSUFFICIENT_SIZE = 7
_FIRST_CAPACITY = 64
_ATTEMPTS = 4


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
        # The C process-list functions called directly (None: not available, use pynvml's),
        # and how many records to make room for, per (kind, device uuid).
        self._direct_calls: dict[str, Any] = {}
        self._capacity: dict[tuple[str, str], int] = {}

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
                infos = self._direct_query(kind, handle, uuid)
                if infos is None:
                    infos = [
                        (getattr(info, "pid", 0), getattr(info, "usedGpuMemory", None))
                        for info in self._query(kind, handle)
                    ]
            except Exception as error:  # NVMLError, or a binding that does not match the driver
                optional = kind == "MPSCompute" and (
                    isinstance(error, _NoVariant)
                    or _is(error, "NVMLError_NotSupported", "NVMLError_FunctionNotFound")
                )
                if not optional:
                    label = "MPS" if kind == "MPSCompute" else "compute"
                    errors.append(f"device {index}: cannot list {label} processes: {_text(error)}")
                continue
            for pid, used in infos:
                pid = int(pid or 0)
                if pid in GARBAGE_PIDS or pid < 0:
                    continue
                used = None if used is None or int(used) >= _NOT_AVAILABLE else int(used)
                previous = by_pid.get(pid)
                if previous is not None and (used is None or previous.used_memory is not None):
                    continue
                by_pid[pid] = GpuProcess(pid, index, uuid, used)
        return list(by_pid.values())

    def _direct_query(
        self, kind: str, handle: Any, uuid: str
    ) -> list[tuple[int, int]] | None:
        """The process list read straight into a ctypes buffer; None when not possible here.

        pynvml asks twice per call (once for the count, once for the records) and turns each
        record into a Python object through ``__getattribute__`` hooks; with thousands of GPU
        processes that was most of the daemon's time. Sized from the previous answer, the
        buffer is nearly always big enough for one call, and the records are unpacked in bulk.
        """
        function = self._direct_call(kind, handle)
        if function is None:
            return None
        key = (kind, uuid)
        capacity = self._capacity.get(key, _FIRST_CAPACITY)
        for _ in range(_ATTEMPTS):
            count = ctypes.c_uint(capacity)
            records = (_ProcessRecord * capacity)()
            status = function(handle, ctypes.byref(count), records)
            if status == _NVML_ERROR_INSUFFICIENT_SIZE and count.value > capacity:
                capacity = self._capacity[key] = count.value * 2 + 5  # as pynvml sizes it
                continue
            if status != _NVML_SUCCESS:
                raise pynvml.NVMLError(status)
            found = min(count.value, capacity)
            self._capacity[key] = max(_FIRST_CAPACITY, found * 2 + 5)
            data = ctypes.string_at(records, found * _RECORD.size)
            return [(pid, used) for pid, used, _, _ in _RECORD.iter_unpack(data)]
        raise pynvml.NVMLError(_NVML_ERROR_INSUFFICIENT_SIZE)  # it kept growing: next cycle

    def _direct_call(self, kind: str, handle: Any) -> Any:
        """The C function behind ``kind``'s ``_v3`` list, when ``handle`` is a real NVML handle
        (not a test's stand-in object) and the driver has it."""
        device_type = getattr(pynvml, "c_nvmlDevice_t", None)
        if device_type is None or not isinstance(handle, device_type):
            return None
        if kind not in self._direct_calls:
            self._direct_calls[kind] = None
            lookup = getattr(pynvml, "_nvmlGetFunctionPointer", None)
            if lookup is not None and ctypes.sizeof(_ProcessRecord) == _RECORD.size:
                with contextlib.suppress(Exception):  # missing: pynvml's own calls instead
                    self._direct_calls[kind] = lookup(_DIRECT_CALLS[kind])
        return self._direct_calls[kind]

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
            self._direct_calls.clear()
            self._capacity.clear()
            # Nothing useful to tell the user when shutdown fails.
            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()
