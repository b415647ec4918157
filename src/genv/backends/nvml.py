"""The preferred backend: NVML in-process, through ``nvml_binding`` (the one driver path).

NVML is initialised once, lazily, and kept open: re-initialising per query costs ten times
more. When the driver goes away (unloaded, replaced by an update, a GPU lost), the view is
reported as unavailable or partial, NVML is shut down, and it is opened again on a later
snapshot, after a back-off that doubles up to ``MAX_BACKOFF_S``: a driver reload recovers
without restarting the daemon, and a dead driver costs one attempt per back-off, not a loop.
Importing this module never touches the driver, so it works on machines without a GPU.
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import time
from collections.abc import Callable

from genv.backends.errors import BackendError
from genv.backends.nvml_binding import (
    ERROR_DRIVER_NOT_LOADED,
    ERROR_FUNCTION_NOT_FOUND,
    ERROR_LIB_RM_VERSION_MISMATCH,
    ERROR_LIBRARY_NOT_FOUND,
    ERROR_NO_PERMISSION,
    ERROR_NOT_SUPPORTED,
    NvmlError,
    NvmlLibrary,
    Record,
)
from genv.domain.models import Device, DeviceTelemetry, GpuProcess, GpuSnapshot
from genv.system.procfs import valid_pid

# A device as last read: the Device, the process lists it was read from, its processes.
_DeviceReading = tuple[Device, tuple["list[Record] | None", ...], tuple[GpuProcess, ...]]

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0

_FAKE_HINT = (
    "or set GENV_GPU_BACKEND=fake GENV_FAKE_MACHINE=machine.json to simulate one (see README)"
)


def init_error_message(error: NvmlError) -> str:
    """One line for a failed ``nvmlInit``: what is wrong and what to do."""
    if error.code == ERROR_LIBRARY_NOT_FOUND:
        return (
            "the NVIDIA driver library libnvidia-ml.so.1 was not found: install the NVIDIA "
            f"driver, {_FAKE_HINT}"
        )
    if error.code == ERROR_DRIVER_NOT_LOADED:
        return (
            "the NVIDIA kernel driver is not loaded: load it (modprobe nvidia, or reboot), "
            f"{_FAKE_HINT}"
        )
    if error.code == ERROR_LIB_RM_VERSION_MISMATCH:
        return (
            "the NVIDIA driver library and kernel module versions differ (driver updated "
            "without a reboot?): reboot or reload the nvidia kernel module"
        )
    if error.code == ERROR_NO_PERMISSION:
        return "no permission to use the NVIDIA driver (NVML): check access to /dev/nvidia*"
    return (
        f"cannot initialise NVML ({error}): check the driver with nvidia-smi, or try "
        "GENV_GPU_BACKEND=nvidia-smi"
    )


class NvmlBackend:
    """Reads devices and compute processes through NVML, kept open until ``close``.

    What cannot change while NVML is open is kept: each device's handle, uuid and name by
    index (until the device count changes or the device errors: a handle names one device,
    and calls on it fail once that device is gone); memory and processes are read on every
    snapshot. ``clock`` (monotonic seconds) times the back-off; tests pass their own.
    """

    name = "nvml"

    def __init__(
        self,
        library: NvmlLibrary | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._library = library if library is not None else NvmlLibrary()
        self._clock = clock
        self._lock = _thread.allocate_lock()  # threading.Lock, without importing threading
        self._open = False
        self._names: dict[str, str] = {}
        # Each device's handle, uuid and name, by index, for as long as NVML stays open and
        # counts as many devices: a handle names one physical device until nvmlShutdown (a
        # device that goes away makes calls on its handle fail: GPU_IS_LOST), and a device
        # that errors is looked up again. A steady cycle does not ask for what cannot change.
        self._handles: dict[int, tuple[ctypes.c_void_p, str, str]] = {}
        self._count: int | None = None
        self._backoff = 0.0
        self._retry_at = 0.0  # no nvmlInit before this, after one failed
        self._failure = ""  # why NVML is not open, for the lines said while waiting
        self._reopen_at: float | None = None  # a device was lost: open NVML again then
        # What the last snapshot was made of, so that what did not change is handed back as
        # the very same objects (a daemon on an unchanged machine builds nothing):
        # per device index, its Device, the lists it was read from and its processes.
        self._devices: dict[int, _DeviceReading] = {}
        self._last: GpuSnapshot | None = None

    def snapshot(self, processes: bool = True) -> GpuSnapshot:
        """Every device NVML counts now; what fails goes to ``errors`` and makes it partial."""
        with self._lock:
            self._ensure_open()
            try:
                count = self._library.device_count()
            except NvmlError as error:
                if error.driver_lost:
                    self._lose(f"NVML cannot count the GPUs ({error})")
                raise BackendError(
                    f"NVML cannot count the GPUs ({error}): check the driver with nvidia-smi"
                ) from None
            if count != self._count:  # a device came or went: the indices may mean others
                self._handles.clear()
                self._count = count
            reading = _Reading()
            for index in range(count):
                self._read_device(index, processes, reading)
            if count and not reading.devices:
                if reading.lost:
                    self._lose(f"NVML cannot read any GPU ({reading.errors[0]})")
                raise BackendError(
                    f"NVML cannot read any of the {count} GPU(s): {reading.errors[0]}; check "
                    "the driver with nvidia-smi"
                )
            if reading.lost:
                self._schedule_reopen()
            elif not reading.partial:
                self._backoff = 0.0
            return self._snapshot_of(reading, processes)

    def _snapshot_of(self, reading: _Reading, processes: bool) -> GpuSnapshot:
        """The snapshot of ``reading``: the previous one itself when it is made of the very
        same devices and processes and nothing failed (an unchanged machine)."""
        last = self._last
        if (
            processes
            and last is not None
            and not reading.errors
            and not last.errors
            and reading.same
            and len(reading.devices) == len(last.devices)
        ):
            return last
        snapshot = GpuSnapshot(
            tuple(reading.devices),
            tuple(reading.processes),
            tuple(reading.errors),
            reading.partial,
        )
        if processes:
            self._last = snapshot
        return snapshot

    def telemetry(self) -> tuple[DeviceTelemetry, ...]:
        """Temperature and utilization of every device that answers (see TelemetrySource).

        Losing the driver here is left for the next snapshot to notice and handle.
        """
        with self._lock:
            try:
                self._ensure_open()
                count = self._library.device_count()
            except (BackendError, NvmlError):
                return ()
            found = []
            for index in range(count):
                try:
                    handle = self._library.device_handle(index)
                except NvmlError:
                    continue
                found.append(
                    DeviceTelemetry(
                        index,
                        _optional(self._library.temperature, handle),
                        _optional(self._library.utilization, handle),
                    )
                )
            return tuple(found)

    def close(self) -> None:
        """Shut NVML down if it is open; a later snapshot opens it again, without waiting."""
        with self._lock:
            self._shutdown()
            self._backoff = 0.0
            self._retry_at = 0.0
            self._reopen_at = None

    # -- one device ------------------------------------------------------------------------

    def _read_device(self, index: int, processes: bool, reading: _Reading) -> None:
        library = self._library
        kept = self._handles.get(index)
        if kept is not None:
            handle, uuid, name = kept
        else:
            try:
                handle = library.device_handle(index)
                uuid = library.uuid(handle)
                known = self._names.get(uuid)
                name = known if known is not None else library.name(handle)
                self._names[uuid] = name
            except NvmlError as error:
                reading.failed(f"device {index}: {error}", error)
                return
        try:
            total, used = library.memory(handle)
        except NvmlError as error:
            if error.code != ERROR_NOT_SUPPORTED:
                self._handles.pop(index, None)  # looked up again next time
                reading.failed(f"device {index}: {error}", error)
                return
            # Unified-memory parts (GB10) have no framebuffer figures; the device still
            # exists and runs processes, so keep it, as nvidia-smi's [N/A] does.
            reading.errors.append(f"device {index}: memory not reported ({error})")
            total, used = 0, None
        if total is None:
            reading.errors.append(f"device {index}: total memory not reported")
            total = 0
        if kept is None:
            self._handles[index] = (handle, uuid, name)
        before = self._devices.get(index)
        device = before[0] if before is not None else None
        if (
            device is None
            or device.used_memory != used
            or device.uuid != uuid
            or device.name != name
            or device.total_memory != total
        ):
            device = Device(index, uuid, name, total, used)
            reading.same = False
        reading.devices.append(device)
        if processes:
            self._read_processes(handle, device, before, reading)

    def _read_processes(
        self,
        handle: ctypes.c_void_p,
        device: Device,
        before: _DeviceReading | None,
        reading: _Reading,
    ) -> None:
        """Compute and MPS processes of one device, each pid once (with its known memory).

        Lists the driver answered exactly as before (the binding hands back the very same
        list objects) give the device's previous processes, as they were."""
        index, uuid = device.index, device.uuid
        errors = len(reading.errors)
        compute: list[Record] | None = None
        mps: list[Record] | None = None
        try:
            compute = self._library.processes(handle, "Compute", uuid)
        except NvmlError as error:
            reading.failed(f"device {index}: cannot list compute processes: {error}", error)
        try:
            mps = self._library.processes(handle, "MPSCompute", uuid)
        except NvmlError as error:
            if error.code not in (ERROR_NOT_SUPPORTED, ERROR_FUNCTION_NOT_FOUND):
                reading.failed(f"device {index}: cannot list MPS processes: {error}", error)
            # else: no MPS here, nothing is missing
        if (
            before is not None
            and before[0] is device
            and compute is before[1][0]
            and mps is before[1][1]
            and len(reading.errors) == errors
        ):
            reading.processes.extend(before[2])
            return
        answered = (compute, mps)
        reading.same = False
        old = (
            {(p.pid, p.used_memory): p for p in before[2]}
            if before is not None and before[0].uuid == uuid
            else {}
        )
        by_pid: dict[int, GpuProcess] = {}
        for records in answered:
            if records is None:
                continue
            for pid, used in records:
                if not valid_pid(pid):
                    reading.failed(f"device {index}: NVML reports a process with pid {pid}")
                    continue
                previous = by_pid.get(pid)
                if previous is not None and (used is None or previous.used_memory is not None):
                    continue
                kept = old.get((pid, used))
                by_pid[pid] = kept if kept is not None else GpuProcess(pid, index, uuid, used)
        found = tuple(by_pid.values())
        reading.processes.extend(found)
        if len(reading.errors) == errors:
            self._devices[index] = (device, answered, found)
        else:
            self._devices.pop(index, None)
            self._handles.pop(index, None)

    # -- opening, losing and reopening NVML --------------------------------------------------

    def _ensure_open(self) -> None:
        now = self._clock()
        if self._open:
            if self._reopen_at is None or now < self._reopen_at:
                return
            self._shutdown()
        if now < self._retry_at:
            raise BackendError(
                f"{self._failure}; NVML is tried again in {self._retry_at - now:.0f} s"
            )
        try:
            self._library.init()
        except NvmlError as error:
            message = init_error_message(error)
            self._fail(message)
            raise BackendError(message) from None
        self._open = True
        self._reopen_at = None

    def _grow_backoff(self) -> float:
        self._backoff = min(max(FIRST_BACKOFF_S, 2 * self._backoff), MAX_BACKOFF_S)
        return self._backoff

    def _fail(self, why: str) -> None:
        """NVML could not be opened: wait a while before the next attempt."""
        self._retry_at = self._clock() + self._grow_backoff()
        self._failure = why

    def _lose(self, why: str) -> None:
        """The driver went away: shut NVML down, open it again after the back-off."""
        self._shutdown()
        self._fail(why)

    def _schedule_reopen(self) -> None:
        """A device was lost, others still answer: keep reading them, reopen NVML later."""
        if self._reopen_at is None:
            self._reopen_at = self._clock() + self._grow_backoff()

    def _shutdown(self) -> None:
        if not self._open:
            return
        self._open = False
        self._names.clear()
        self._handles.clear()
        self._count = None
        self._devices.clear()
        self._last = None
        self._library.forget()
        with contextlib.suppress(NvmlError):  # the driver is gone already: nothing to release
            self._library.shutdown()


def _optional(read: Callable[[ctypes.c_void_p], int | None], handle: ctypes.c_void_p) -> int | None:
    try:
        return read(handle)
    except NvmlError:
        return None


class _Reading:
    """What one snapshot has read so far."""

    def __init__(self) -> None:
        self.devices: list[Device] = []
        self.processes: list[GpuProcess] = []
        self.errors: list[str] = []
        self.partial = False
        self.lost = False
        self.same = True  # every device and process list as in the previous snapshot

    def failed(self, line: str, error: NvmlError | None = None) -> None:
        """Something could not be read: what it would have shown is unknown."""
        self.errors.append(line)
        self.partial = True
        if error is not None and error.driver_lost:
            self.lost = True
