"""A simulated machine read from a JSON file, so every layer runs end to end without a GPU.

The file (path in ``GENV_FAKE_MACHINE``) is shared with other tools; keep its format::

    {"devices": [{"total_memory": "80gi", "uuid": "GPU-...", "name": "..."}],
     "processes": [{"pid": 1234, "device": 0, "used_memory": "7295mi"}]}

The processes are real host processes: an entry whose pid is gone is dropped, as the driver
would, so tests start ``sleep`` and kill it to make a GPU process appear and disappear.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from genv.backends.base import BackendError
from genv.domain.memory import MemoryFormatError, parse_memory
from genv.domain.models import Device, GpuProcess, GpuSnapshot

ENV_VAR = "GENV_FAKE_MACHINE"
DEFAULT_NAME = "Simulated GPU"


def default_uuid(index: int) -> str:
    """The UUID of a simulated device that names none: stable, so records keyed by UUID hold."""
    return f"GPU-00000000-0000-0000-0000-{index:012x}"


@dataclass(frozen=True)
class ProcessSpec:
    """One process entry of the machine file; ``used_memory`` None means unknown."""

    pid: int
    device: int
    used_memory: int | None


@dataclass(frozen=True)
class MachineSpec:
    """The machine file, checked: devices in index order and the process entries."""

    devices: tuple[tuple[str, str, int], ...]  # (uuid, name, total_memory) by index
    processes: tuple[ProcessSpec, ...]


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
        machine = self._load()
        errors: list[str] = []
        count = len(machine.devices)
        used = [0] * count
        live: list[GpuProcess] = []
        for entry in machine.processes:
            if not 0 <= entry.device < count:
                errors.append(
                    f"{self.path}: process {entry.pid} is on device {entry.device}, "
                    f"but the machine has {count} device(s)"
                )
                continue
            if not _alive(entry.pid):
                continue
            used[entry.device] += entry.used_memory or 0
            uuid = machine.devices[entry.device][0]
            live.append(GpuProcess(entry.pid, entry.device, uuid, entry.used_memory))
        devices = tuple(
            Device(index, uuid, name, total, used[index])
            for index, (uuid, name, total) in enumerate(machine.devices)
        )
        return GpuSnapshot(devices, tuple(live) if processes else (), tuple(errors))

    def close(self) -> None:
        """Nothing is held open; forget the cached file so a reuse reads it afresh."""
        self._key = None
        self._machine = None

    def _load(self) -> MachineSpec:
        """The parsed file, parsed again only when its mtime, size or inode changed."""
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
            self._machine = self._parse()
            self._key = key
        return self._machine

    def _parse(self) -> MachineSpec:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise BackendError(
                f"cannot read simulated machine file {self.path}: {reason}"
            ) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise BackendError(
                f"simulated machine file {self.path} is not valid JSON: {error.msg} "
                f"at line {error.lineno} column {error.colno}"
            ) from None
        try:
            return parse_machine(data)
        except ValueError as error:
            raise BackendError(f"simulated machine file {self.path}: {error}") from None


def parse_machine(data: object) -> MachineSpec:
    """Check the machine document's shape; ``ValueError`` says what is wrong and where."""
    if not isinstance(data, dict):
        raise ValueError('expected a JSON object with a "devices" list')
    raw_devices = data.get("devices")
    if not isinstance(raw_devices, list):
        raise ValueError('"devices" must be a list of objects with "total_memory"')
    devices: list[tuple[str, str, int]] = []
    seen_uuids: set[str] = set()
    for index, raw in enumerate(raw_devices):
        where = f"devices[{index}]"
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be an object")
        if "total_memory" not in raw:
            raise ValueError(f'{where} has no "total_memory"')
        total = _memory(raw["total_memory"], f"{where}.total_memory")
        if total is None:
            raise ValueError(f"{where}.total_memory must not be null")
        uuid = _text(raw.get("uuid"), f"{where}.uuid") or default_uuid(index)
        if uuid in seen_uuids:
            raise ValueError(f"{where}.uuid {uuid} is used by another device")
        seen_uuids.add(uuid)
        name = _text(raw.get("name"), f"{where}.name") or DEFAULT_NAME
        devices.append((uuid, name, total))
    raw_processes = data.get("processes", [])
    if raw_processes is None:
        raw_processes = []
    if not isinstance(raw_processes, list):
        raise ValueError('"processes" must be a list of objects with "pid" and "device"')
    processes: list[ProcessSpec] = []
    seen: set[tuple[int, int]] = set()
    for index, raw in enumerate(raw_processes):
        where = f"processes[{index}]"
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be an object")
        pid = _integer(raw.get("pid"), f"{where}.pid", minimum=1)
        device = _integer(raw.get("device"), f"{where}.device", minimum=0)
        if (pid, device) in seen:
            raise ValueError(f"{where}: process {pid} is already listed on device {device}")
        seen.add((pid, device))
        used = _memory(raw.get("used_memory"), f"{where}.used_memory")
        processes.append(ProcessSpec(pid, device, used))
    return MachineSpec(tuple(devices), tuple(processes))


def _memory(value: object, where: str) -> int | None:
    """Bytes from a memory string (``80gi``) or a plain integer; None stays None (unknown)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{where} must be a memory amount such as 80gi, not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{where} must not be negative")
        return value
    if isinstance(value, str):
        try:
            return parse_memory(value)
        except MemoryFormatError as error:
            raise ValueError(f"{where}: {error}") from None
    raise ValueError(f"{where} must be a memory amount such as 80gi, not {value!r}")


def _integer(value: object, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be a whole number, not {value!r}")
    if value < minimum:
        raise ValueError(f"{where} must be at least {minimum}, not {value}")
    return value


def _text(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, not {value!r}")
    return value.strip() or None


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs; a zombie has already given its GPU memory back.

    One read of /proc/PID/stat: the simulated machine is polled every cycle, for thousands of
    processes in the benchmarks, and psutil's checks cost several times as much.
    """
    if not 0 < pid < 2**31:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            data = stat_file.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True  # exists, but cannot be read: it holds the GPU as far as we know
    state = data[data.rfind(b")") + 2 : data.rfind(b")") + 3]
    return state not in (b"Z", b"X", b"x")
