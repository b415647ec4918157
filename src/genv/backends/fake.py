"""A simulated machine read from a JSON file, so every layer runs end to end without a GPU.

The file (path in ``GENV_FAKE_MACHINE``) is defined in ``genv.backends.machine_file``, which
also writes it::

    {"devices": [{"total_memory": "80gi", "uuid": "GPU-...", "name": "...",
                  "temperature": 41, "utilization": 87}],
     "processes": [{"pid": 1234, "device": 0, "used_memory": "7295mi", "start": 8812}]}

The processes are real host processes: an entry counts only while the very process it
describes runs (``machine_file.process_counts``), as the driver would report it, so tests
start ``sleep`` and kill it to make a GPU process appear and disappear, and a pid reused by
another process is never reported.
"""

from __future__ import annotations

import os
from pathlib import Path

from genv.backends.errors import BackendError
from genv.backends.machine_file import (
    DEFAULT_NAME,
    ENV_VAR,
    MachineFileError,
    MachineSpec,
    ProcessSpec,
    default_uuid,
    parse_machine,
    process_counts,
    read_machine,
    written_tick,
)
from genv.domain.models import Device, DeviceTelemetry, GpuProcess, GpuSnapshot

__all__ = [
    "DEFAULT_NAME",
    "ENV_VAR",
    "FakeBackend",
    "MachineSpec",
    "ProcessSpec",
    "default_uuid",
    "parse_machine",
]


class FakeBackend:
    """Devices from the machine file, processes from it that are still alive on the host."""

    name = "fake"

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is None:
            path = os.environ.get(ENV_VAR, "").strip()
            if not path:
                raise BackendError(
                    f"the fake GPU backend needs {ENV_VAR}: set it to a machine JSON file "
                    f"(GENV_GPU_BACKEND=fake {ENV_VAR}=machine.json, see README)"
                )
        self.path = Path(path)
        self._key: tuple[int, int, int] | None = None
        self._machine: MachineSpec | None = None

    def snapshot(self, processes: bool = True) -> GpuSnapshot:
        """Re-read the file (when it changed) and keep only the processes still running."""
        machine, mtime_ns = self._load()
        written = written_tick(mtime_ns)
        errors: list[str] = []
        count = len(machine.devices)
        used = [0] * count
        live: list[GpuProcess] = []
        for entry in machine.processes:
            if entry.device >= count:
                errors.append(
                    f"{self.path}: process {entry.pid} is on device {entry.device}, "
                    f"but the machine has {count} device(s)"
                )
                continue
            if not process_counts(entry, machine.boot_id, written):
                continue
            used[entry.device] += entry.used_memory or 0
            uuid = machine.devices[entry.device][0]
            live.append(GpuProcess(entry.pid, entry.device, uuid, entry.used_memory))
        devices = tuple(
            Device(index, uuid, name, total, used[index])
            for index, (uuid, name, total) in enumerate(machine.devices)
        )
        return GpuSnapshot(devices, tuple(live) if processes else (), tuple(errors))

    def telemetry(self) -> tuple[DeviceTelemetry, ...]:
        """Temperature and utilization as the file gives them (optional device fields)."""
        try:
            machine, _ = self._load()
        except BackendError:
            return ()
        return tuple(
            DeviceTelemetry(index, temperature, utilization)
            for index, (temperature, utilization) in enumerate(machine.telemetry)
        )

    def close(self) -> None:
        """Nothing is held open; forget the cached file so a reuse reads it afresh."""
        self._key = None
        self._machine = None

    def _load(self) -> tuple[MachineSpec, int]:
        """The parsed file and its mtime, parsed again only when mtime, size or inode changed."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            raise BackendError(
                f"simulated machine file {self.path} does not exist: create it or fix {ENV_VAR}"
            ) from None
        except OSError as error:
            raise BackendError(
                f"cannot read simulated machine file {self.path}: {error.strerror}"
            ) from None
        key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if self._machine is None or key != self._key:
            try:
                machine, read = read_machine(self.path)
            except MachineFileError as error:
                raise BackendError(str(error)) from None
            self._machine = machine
            self._key = key = (read.st_mtime_ns, read.st_size, read.st_ino)
        return self._machine, key[0]
