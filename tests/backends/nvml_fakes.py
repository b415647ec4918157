"""A fake NVML driver *under* genv's binding: C-callable functions (ctypes callbacks) that
the opened library hands out by name, as gpustat fakes NVML's function pointers.

So the tests run the very code that runs on a GPU server: ``nvml_binding`` calls these with
ctypes arguments, reads their buffers and return codes. ``FakeDriver.install`` replaces
``nvml_binding.open_library`` (the ``dlopen``) with one that hands out this driver.
"""

from __future__ import annotations

import ctypes
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from genv.backends import nvml_binding

SUCCESS = 0
INVALID_ARGUMENT = 2
NOT_SUPPORTED = 3
NO_PERMISSION = 4
INSUFFICIENT_SIZE = 7
DRIVER_NOT_LOADED = 9
LIBRARY_NOT_FOUND = 12
FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15
LIB_RM_VERSION_MISMATCH = 18
UNINITIALIZED = 1
UNKNOWN = 999
NOT_AVAILABLE = 2**64 - 1

GI = 1024**3
MI = 1024**2

Entry = tuple[int, int | None]  # (pid, used bytes; None: "not available")

ALL_LISTS = tuple(
    f"nvmlDeviceGet{kind}RunningProcesses{suffix}"
    for kind in ("Compute", "MPSCompute")
    for suffix in ("_v3", "_v2", "")
)


class Memory(ctypes.Structure):
    _fields_ = [
        ("total", ctypes.c_ulonglong),
        ("free", ctypes.c_ulonglong),
        ("used", ctypes.c_ulonglong),
    ]


INIT = ctypes.CFUNCTYPE(ctypes.c_int)
COUNT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_uint))
HANDLE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p))
TEXT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint)
MEMORY = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
TEMPERATURE = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_uint)
)
UTILIZATION = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
LIST = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p
)


class _Library:
    """What ``open_library`` gives: the driver's functions as attributes."""

    def __init__(self, driver: FakeDriver) -> None:
        self._driver = driver

    def __getattr__(self, name: str) -> object:
        return self._driver.lookup(name)


@dataclass
class FakeGpu:
    """One device. ``error`` answers every call on it; ``compute``/``mps`` may be a code."""

    uuid: str
    name: str | bytes = "NVIDIA H100 80GB HBM3"
    total: int = 80 * GI
    used: int = 0
    compute: list[Entry] | int = field(default_factory=list)
    mps: list[Entry] | int = field(default_factory=list)
    error: int | None = None
    memory_error: int | None = None
    # Called before each answer of a process list (e.g. to make the list grow).
    before_list: Callable[[FakeGpu, str], None] | None = None
    # Answer INSUFFICIENT_SIZE with this count, whatever the buffer.
    claimed: int | None = None
    # On success, report this many records (more than were written: a lying driver).
    overcount: int | None = None
    temperature: int | None = None  # None: NOT_SUPPORTED
    utilization: int | None = None


class FakeDriver:
    """The C functions genv calls, answered from ``gpus``; ``calls`` counts each by name."""

    def __init__(self) -> None:
        self.gpus: list[FakeGpu] = []
        # The device each handle given out names, as a driver's handle does: one that is no
        # longer there answers GPU_IS_LOST, even if another stands at its index now.
        self._issued: list[FakeGpu] = []
        self.library_missing = False
        self.init_error: int | None = None
        self.count_error: int | None = None
        self.count_override: int | None = None
        self.missing: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.list_calls: list[tuple[str, int, bool]] = []  # (name, count in, buffer given)
        self.initialized = 0
        self._functions: dict[str, object] = {
            "nvmlInit_v2": INIT(self._init),
            "nvmlInit": INIT(self._init),
            "nvmlShutdown": INIT(self._shutdown),
            "nvmlDeviceGetCount_v2": COUNT(self._count),
            "nvmlDeviceGetCount": COUNT(self._count),
            "nvmlDeviceGetHandleByIndex_v2": HANDLE(self._handle),
            "nvmlDeviceGetHandleByIndex": HANDLE(self._handle),
            "nvmlDeviceGetUUID": TEXT(self._text("uuid")),
            "nvmlDeviceGetName": TEXT(self._text("name")),
            "nvmlDeviceGetMemoryInfo": MEMORY(self._memory),
            "nvmlDeviceGetTemperature": TEMPERATURE(self._temperature),
            "nvmlDeviceGetUtilizationRates": UTILIZATION(self._utilization),
        }
        for name in ALL_LISTS:
            self._functions[name] = LIST(self._lister(name))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeDriver:
        monkeypatch.setattr(nvml_binding, "open_library", self._load)
        return self

    # -- the dynamic loader's side ---------------------------------------------------------

    def _load(self) -> _Library:
        self.calls["load"] += 1
        if self.library_missing:
            raise OSError("libnvidia-ml.so.1: cannot open shared object file")
        return _Library(self)

    def lookup(self, name: str) -> object:
        """A function by name, as ``getattr`` on a ``ctypes.CDLL`` finds it (or not)."""
        self.calls[f"lookup {name}"] += 1
        if name in self.missing or name not in self._functions:
            raise AttributeError(f"undefined symbol: {name}")
        return self._functions[name]

    # -- the C functions ---------------------------------------------------------------------

    def _init(self) -> int:
        self.calls["init"] += 1
        if self.init_error is not None:
            return self.init_error
        self.initialized += 1
        return SUCCESS

    def _shutdown(self) -> int:
        self.calls["shutdown"] += 1
        if not self.initialized:
            return UNINITIALIZED
        self.initialized -= 1
        return SUCCESS

    def _count(self, out: ctypes._Pointer[ctypes.c_uint]) -> int:
        self.calls["count"] += 1
        if not self.initialized:
            return UNINITIALIZED
        if self.count_error is not None:
            return self.count_error
        out[0] = len(self.gpus) if self.count_override is None else self.count_override
        return SUCCESS

    def _handle(self, index: int, out: ctypes._Pointer[ctypes.c_void_p]) -> int:
        self.calls["handle"] += 1
        if not self.initialized:
            return UNINITIALIZED
        if index >= len(self.gpus):
            return INVALID_ARGUMENT
        gpu = self.gpus[index]
        if not any(issued is gpu for issued in self._issued):
            self._issued.append(gpu)
        out[0] = next(n for n, issued in enumerate(self._issued, 1) if issued is gpu)
        return SUCCESS

    def _gpu(self, handle: int | None) -> FakeGpu | int:
        if not self.initialized:
            return UNINITIALIZED
        if not handle or handle > len(self._issued):
            return INVALID_ARGUMENT
        gpu = self._issued[handle - 1]
        if not any(present is gpu for present in self.gpus):
            return GPU_IS_LOST
        return gpu.error if gpu.error is not None else gpu

    def _text(self, what: str) -> Callable[[int | None, int | None, int], int]:
        def call(handle: int | None, buffer: int | None, length: int) -> int:
            self.calls[what] += 1
            gpu = self._gpu(handle)
            if isinstance(gpu, int):
                return gpu
            value = getattr(gpu, what)
            data = value if isinstance(value, bytes) else value.encode()
            if len(data) > length or not buffer:
                return INSUFFICIENT_SIZE
            # A driver may fill the whole buffer without a NUL (``bytes`` names do so).
            ctypes.memmove(buffer, data + b"\0" * (length - len(data)), length)
            return SUCCESS

        return call

    def _memory(self, handle: int | None, address: int | None) -> int:
        gpu = self._gpu(handle)
        if isinstance(gpu, int):
            return gpu
        if gpu.memory_error is not None:
            return gpu.memory_error
        if not address:
            return INVALID_ARGUMENT
        out = Memory.from_address(address)
        out.total, out.used = gpu.total, gpu.used
        out.free = max(gpu.total - gpu.used, 0)
        return SUCCESS

    def _temperature(
        self, handle: int | None, sensor: int, out: ctypes._Pointer[ctypes.c_uint]
    ) -> int:
        self.calls["temperature"] += 1
        gpu = self._gpu(handle)
        if isinstance(gpu, int):
            return gpu
        if gpu.temperature is None or sensor != 0:
            return NOT_SUPPORTED
        out[0] = gpu.temperature
        return SUCCESS

    def _utilization(self, handle: int | None, address: int | None) -> int:
        self.calls["utilization"] += 1
        gpu = self._gpu(handle)
        if isinstance(gpu, int):
            return gpu
        if gpu.utilization is None or not address:
            return NOT_SUPPORTED
        ctypes.memmove(address, struct.pack("II", gpu.utilization, 0), 8)
        return SUCCESS

    def _lister(self, name: str) -> Callable[..., int]:
        v1 = not name.endswith(("_v2", "_v3"))
        layout = struct.Struct("@IQ" if v1 else "@IQII")
        kind = "mps" if "MPS" in name else "compute"

        def call(
            handle: int | None, count: ctypes._Pointer[ctypes.c_uint], buffer: int | None
        ) -> int:
            self.calls[name] += 1
            self.list_calls.append((name, count[0], bool(buffer)))
            gpu = self._gpu(handle)
            if isinstance(gpu, int):
                return gpu
            if gpu.before_list is not None:
                gpu.before_list(gpu, kind)
            entries = getattr(gpu, kind)
            if isinstance(entries, int):
                return entries
            if gpu.claimed is not None:
                count[0] = gpu.claimed
                return INSUFFICIENT_SIZE
            if count[0] < len(entries):
                count[0] = len(entries)
                return INSUFFICIENT_SIZE
            if entries and not buffer:
                return INVALID_ARGUMENT
            for position, (pid, used) in enumerate(entries):
                memory = NOT_AVAILABLE if used is None else used
                record = (
                    layout.pack(pid, memory)
                    if v1
                    else layout.pack(pid, memory, 0xFFFFFFFF, 0xFFFFFFFF)
                )
                ctypes.memmove(buffer + position * layout.size, record, layout.size)
            count[0] = len(entries) if gpu.overcount is None else gpu.overcount
            return SUCCESS

        return call


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
