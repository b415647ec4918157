"""NVML's C functions, the one path from genv to the driver.

``libnvidia-ml.so.1`` is opened with ctypes and its functions are looked up by name; every
call, its structures and its answer are handled here, so the code that runs on a GPU server
is the code the tests run (they put a fake library in place of ``open_library``'s, or load
the stand-in ``libnvidia-ml.so.1``). nvidia-ml-py is not imported: loading its 8,000-line
module (and ``ctypes.util`` with ``subprocess``, ``tempfile`` and ``shutil``) cost about
20 ms at every start, a third of ``genv devices``, for the two lines taken from it (the
``dlopen`` and the lookup); docs/architecture.md says more.

The process lists are what the enforcer acts on, so they get the care the driver asks for:

- the function version is negotiated once: ``_v3``, else ``_v2`` (both with nvml.h's 24-byte
  ``nvmlProcessInfo_t``), else the original (16-byte ``nvmlProcessInfo_v1_t``);
- the two-call protocol: the list can grow between the calls, so ``INSUFFICIENT_SIZE`` is
  answered with a bigger buffer, a few times; the buffer is sized from the last answer, so
  one call is usually enough;
- garbage pids (0, 4294967295: a binding that does not match the driver) are dropped and
  "not available" memory (2**64 - 1) becomes None;
- counts beyond any real machine are an error, not an allocation.

Importing this module never touches the driver.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable

from genv.domain.constants import GARBAGE_PIDS, MAX_DEVICES, NOT_AVAILABLE

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from typing import Any

LIBRARY = "libnvidia-ml.so.1"  # the driver's NVML, found as the dynamic loader finds it

# nvml.h's return codes that genv tells apart.
SUCCESS = 0
ERROR_UNINITIALIZED = 1
ERROR_NOT_SUPPORTED = 3
ERROR_NO_PERMISSION = 4
ERROR_INSUFFICIENT_SIZE = 7
ERROR_DRIVER_NOT_LOADED = 9
ERROR_LIBRARY_NOT_FOUND = 12
ERROR_FUNCTION_NOT_FOUND = 13
ERROR_GPU_IS_LOST = 15
ERROR_LIB_RM_VERSION_MISMATCH = 18
ERROR_UNKNOWN = 999

# Errors after which the driver (or the whole device) has to be opened again: NVML was shut
# down under us, the kernel module went away or was replaced, a GPU fell off the bus.
DRIVER_LOST = frozenset(
    {
        ERROR_UNINITIALIZED,
        ERROR_DRIVER_NOT_LOADED,
        ERROR_GPU_IS_LOST,
        ERROR_LIB_RM_VERSION_MISMATCH,
        ERROR_UNKNOWN,
    }
)

_TEXTS = {
    1: "Uninitialized",
    2: "Invalid Argument",
    3: "Not Supported",
    4: "Insufficient Permissions",
    5: "Already Initialized",
    6: "Not Found",
    7: "Insufficient Size",
    8: "Insufficient External Power",
    9: "Driver Not Loaded",
    10: "Timeout",
    11: "Interrupt Request Issue",
    12: "NVML Shared Library Not Found",
    13: "Function Not Found",
    14: "Corrupted infoROM",
    15: "GPU is lost",
    16: "GPU requires restart",
    17: "The operating system has blocked the request.",
    18: "RM has detected an NVML/RM version mismatch.",
    19: "In use by another client",
    20: "Insufficient Memory",
    21: "No data",
    25: "Argument version mismatch",
    27: "Not Ready",
    28: "GPU not found",
    29: "Invalid state",
    999: "Unknown Error",
}

# NVML handles 64 devices today; more is a driver (or binding) answering nonsense.
MAX_RECORDS = 1 << 16  # per device and list; ~1.5 MiB of buffer
_ATTEMPTS = 4  # buffers grown for a list that keeps growing, before trying next snapshot
_TEXT_BUFFER = 96  # NVML_DEVICE_UUID_V2_BUFFER_SIZE, NVML_DEVICE_NAME_V2_BUFFER_SIZE
MAX_TEXTS = 1024  # decoded answers kept (a device's uuid and name each: a few dozen)


def open_library() -> Any:
    """``dlopen`` the driver's NVML (raises OSError where it does not load). The dynamic
    loader keeps one copy per process, however often it is opened; nothing is called."""
    return ctypes.CDLL(LIBRARY)


def describe(code: int) -> str:
    """NVML's text for a return code (as ``nvmlErrorString``, without calling the driver)."""
    return _TEXTS.get(code, f"NVML error {code}")


class NvmlError(Exception):
    """A driver call failed (``code`` from nvml.h), or answered what no driver would (None)."""

    def __init__(self, code: int | None, call: str, detail: str | None = None) -> None:
        super().__init__(code, call, detail)
        self.code = code
        self.call = call
        self.detail = detail

    @property
    def driver_lost(self) -> bool:
        """Whether NVML has to be shut down and opened again (the driver went away)."""
        return self.code in DRIVER_LOST

    def __str__(self) -> str:
        text = self.detail or (describe(self.code) if self.code is not None else "failed")
        return f"{text} ({self.call})"


class _ProcessInfo(ctypes.Structure):
    """``nvmlProcessInfo_t``: the record of the ``_v2`` and ``_v3`` process lists."""

    _fields_ = [
        ("pid", ctypes.c_uint),
        ("usedGpuMemory", ctypes.c_ulonglong),
        ("gpuInstanceId", ctypes.c_uint),
        ("computeInstanceId", ctypes.c_uint),
    ]


class _ProcessInfoV1(ctypes.Structure):
    """``nvmlProcessInfo_v1_t``: the record of the original process lists."""

    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


class _Memory(ctypes.Structure):
    """``nvmlMemory_t``."""

    _fields_ = [
        ("total", ctypes.c_ulonglong),
        ("free", ctypes.c_ulonglong),
        ("used", ctypes.c_ulonglong),
    ]


class _Utilization(ctypes.Structure):
    """``nvmlUtilization_t``: percent of the last sample period."""

    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


TEMPERATURE_GPU = 0  # nvmlTemperatureSensors_t NVML_TEMPERATURE_GPU
MAX_TEMPERATURE = 300  # degrees C: more is a garbage answer, not a reading


# The records unpacked in bulk (a Python object per field through ctypes is the slow part
# with thousands of processes); the layouts are checked against the structures at import.
_UNPACK = {_ProcessInfo: struct.Struct("@IQII"), _ProcessInfoV1: struct.Struct("@IQ")}
for _record, _layout in _UNPACK.items():
    if ctypes.sizeof(_record) != _layout.size:  # pragma: no cover - an unusual ABI
        raise ImportError(f"{_record.__name__} is {ctypes.sizeof(_record)} bytes here")

# The process lists, best version first: (function name, record).
PROCESS_LISTS: dict[str, tuple[tuple[str, type[ctypes.Structure]], ...]] = {
    kind: (
        (f"nvmlDeviceGet{kind}RunningProcesses_v3", _ProcessInfo),
        (f"nvmlDeviceGet{kind}RunningProcesses_v2", _ProcessInfo),
        (f"nvmlDeviceGet{kind}RunningProcesses", _ProcessInfoV1),
    )
    for kind in ("Compute", "MPSCompute")
}

Record = tuple[int, int | None]  # (pid, used bytes or None when not available)

_COUNT = ("nvmlDeviceGetCount_v2", "nvmlDeviceGetCount")
_HANDLE = ("nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByIndex")
_MEMORY = ("nvmlDeviceGetMemoryInfo",)
_TEXT_SIZE = ctypes.c_uint(_TEXT_BUFFER)


class _ListSlot:
    """One process list of one device: the function, its buffer (sized from the last answer)
    and the last answer, raw and unpacked: an unchanged answer (the usual one) is compared as
    bytes and handed back as the same list, unpacked once."""

    __slots__ = (
        "name",
        "function",
        "record",
        "size",
        "capacity",
        "buffer",
        "count",
        "count_ref",
        "data",
        "records",
    )

    def __init__(self, name: str, function: Callable[..., int], record: type[ctypes.Structure]):
        self.name = name
        self.function = function
        self.record = record
        self.size = _UNPACK[record].size
        self.capacity = 0
        self.buffer: Any = None  # NULL while the capacity is 0
        self.count = ctypes.c_uint()
        self.count_ref = ctypes.byref(self.count)
        self.data: bytes | None = None
        self.records: list[Record] = []

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        self.buffer = (self.record * capacity)() if capacity else None


class NvmlLibrary:
    """The driver calls genv makes, each a C function of the library looked up by name.

    Not thread-safe by itself: the backend calls it under its lock.
    """

    def __init__(self) -> None:
        self._library: Any = None  # opened by the first init(), then kept (as dlopen keeps it)
        self._functions: dict[str, Callable[..., int]] = {}
        self._chosen: dict[tuple[str, ...], tuple[str, Callable[..., int]]] = {}
        self._lists: dict[str, tuple[str, Callable[..., int], type[ctypes.Structure]]] = {}
        # What each call fills in, made once (calls are made under the backend's lock).
        self._count = ctypes.c_uint(0)
        self._count_ref = ctypes.byref(self._count)
        self._text_buffer = ctypes.create_string_buffer(_TEXT_BUFFER + 1)
        self._texts: dict[bytes, str] = {}  # each answer decoded once (uuids, names)
        self._memory = _Memory()
        self._memory_ref = ctypes.byref(self._memory)
        # Per list and device: its buffer, sized from the last answer, and that answer.
        self._slots: dict[tuple[str, str], _ListSlot] = {}

    # -- finding functions ---------------------------------------------------------------

    def _function(self, name: str) -> Callable[..., int]:
        function = self._functions.get(name)
        if function is None:
            if self._library is None:
                raise NvmlError(ERROR_UNINITIALIZED, name)
            try:
                function = getattr(self._library, name)
            except AttributeError:
                raise NvmlError(ERROR_FUNCTION_NOT_FOUND, name) from None
            self._functions[name] = function
        return function

    def _first(self, *names: str) -> tuple[str, Callable[..., int]]:
        """The first of ``names`` the library has (newer versions first), found once."""
        chosen = self._chosen.get(names)
        if chosen is None:
            for name in names[:-1]:
                try:
                    chosen = (name, self._function(name))
                    break
                except NvmlError as error:
                    if error.code != ERROR_FUNCTION_NOT_FOUND:
                        raise
            else:
                chosen = (names[-1], self._function(names[-1]))
            self._chosen[names] = chosen
        return chosen

    def _call(self, names: tuple[str, ...], *arguments: Any) -> None:
        name, function = self._chosen.get(names) or self._first(*names)
        code = function(*arguments)
        if code != SUCCESS:
            raise NvmlError(int(code), name)

    # -- the calls -----------------------------------------------------------------------

    def init(self) -> None:
        """Open the library (the first time) and ``nvmlInit``."""
        if self._library is None:
            try:
                self._library = open_library()
            except OSError as error:
                raise NvmlError(ERROR_LIBRARY_NOT_FOUND, "nvmlInit", str(error)) from None
        self.forget()
        self._call(("nvmlInit_v2", "nvmlInit"))

    def shutdown(self) -> None:
        self._call(("nvmlShutdown",))

    def forget(self) -> None:
        """Drop what was learnt about the driver (versions, buffer sizes): it may be new."""
        self._chosen.clear()
        self._lists.clear()
        self._slots.clear()

    def device_count(self) -> int:
        count = self._count
        count.value = 0
        self._call(_COUNT, self._count_ref)
        if count.value > MAX_DEVICES:
            raise NvmlError(None, "nvmlDeviceGetCount", f"{count.value} GPUs reported")
        return count.value

    def device_handle(self, index: int) -> ctypes.c_void_p:
        handle = ctypes.c_void_p()
        self._call(_HANDLE, ctypes.c_uint(index), ctypes.byref(handle))
        return handle

    def uuid(self, handle: ctypes.c_void_p) -> str:
        return self._text("nvmlDeviceGetUUID", handle)

    def name(self, handle: ctypes.c_void_p) -> str:
        return self._text("nvmlDeviceGetName", handle)

    def _text(self, name: str, handle: ctypes.c_void_p) -> str:
        buffer = self._text_buffer  # one more byte than NVML is given: a NUL even if it fills 96
        buffer[0] = b"\0"  # (that last byte is never written) an empty answer reads empty
        self._call((name,), handle, buffer, _TEXT_SIZE)
        raw = buffer.value
        text = self._texts.get(raw)
        if text is None:
            if len(self._texts) >= MAX_TEXTS:
                self._texts.clear()
            text = self._texts[raw] = raw.decode("utf-8", errors="replace")
        return text

    def memory(self, handle: ctypes.c_void_p) -> tuple[int | None, int | None]:
        """(total, used) bytes of the framebuffer; None where NVML says "not available"."""
        memory = self._memory
        memory.total = memory.used = NOT_AVAILABLE
        self._call(_MEMORY, handle, self._memory_ref)
        total, used = memory.total, memory.used
        return (
            None if total >= NOT_AVAILABLE else total,
            None if used >= NOT_AVAILABLE else used,
        )

    def temperature(self, handle: ctypes.c_void_p) -> int | None:
        """The GPU's temperature in degrees C; None for an impossible answer."""
        value = ctypes.c_uint(0)
        sensor = ctypes.c_int(TEMPERATURE_GPU)
        self._call(("nvmlDeviceGetTemperature",), handle, sensor, ctypes.byref(value))
        return value.value if value.value <= MAX_TEMPERATURE else None

    def utilization(self, handle: ctypes.c_void_p) -> int | None:
        """Percent of the last sample period a kernel ran; None for an impossible answer."""
        rates = _Utilization()
        self._call(("nvmlDeviceGetUtilizationRates",), handle, ctypes.byref(rates))
        return rates.gpu if rates.gpu <= 100 else None

    def processes(self, handle: ctypes.c_void_p, kind: str, device: str) -> list[Record]:
        """The ``Compute`` or ``MPSCompute`` processes of a device (``device``: its uuid, the
        key under which the buffer is kept), garbage dropped.

        When the driver's answer is byte for byte the previous one for this device, the very
        list returned then is returned again (callers can tell by identity that nothing
        changed, and must not change it)."""
        key = (kind, device)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _ListSlot(*self._list(kind))
        capacity = slot.capacity
        for _ in range(_ATTEMPTS):
            if capacity != slot.capacity:
                slot.resize(capacity)
            count = slot.count
            count.value = capacity
            code = slot.function(handle, slot.count_ref, slot.buffer)
            if code == SUCCESS:
                found = min(count.value, capacity)
                data = ctypes.string_at(slot.buffer, found * slot.size) if found else b""
                # Room for processes that start before the next call, sized from this
                # answer; the buffer is kept while it stays that size.
                wanted = min(found + found // 4 + 8, MAX_RECORDS) if found else 0
                if wanted != capacity:
                    slot.resize(wanted)
                if data != slot.data:
                    slot.data = data
                    slot.records = _records(data, slot.record) if found else []
                return slot.records
            if code != ERROR_INSUFFICIENT_SIZE:
                raise NvmlError(int(code), slot.name)
            wanted = count.value
            if wanted > MAX_RECORDS:
                raise NvmlError(None, slot.name, f"{wanted} processes reported")
            # Room for processes that start before the next call.
            capacity = min(max(wanted, capacity) + max(wanted, capacity) // 4 + 8, MAX_RECORDS)
        raise NvmlError(ERROR_INSUFFICIENT_SIZE, slot.name, "the list kept growing")

    def _list(self, kind: str) -> tuple[str, Callable[..., int], type[ctypes.Structure]]:
        """The version of ``kind``'s process list this library has, found once."""
        chosen = self._lists.get(kind)
        if chosen is None:
            variants = PROCESS_LISTS[kind]
            name, function = self._first(*(name for name, _ in variants))
            record = dict(variants)[name]
            chosen = self._lists[kind] = (name, function, record)
        return chosen


def _records(data: bytes, record: type[ctypes.Structure]) -> list[Record]:
    return [
        (fields[0], None if fields[1] >= NOT_AVAILABLE else fields[1])
        for fields in _UNPACK[record].iter_unpack(data)
        if fields[0] not in GARBAGE_PIDS
    ]
