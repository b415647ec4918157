"""The simulated machine's file: its one definition, its one writer, and its flat form.

The machine file (``GENV_FAKE_MACHINE``) is JSON, written by people and by tools::

    {"boot_id": "…", "devices": [{"total_memory": "80gi", "uuid": "GPU-…", "name": "…"}],
     "processes": [{"pid": 1234, "device": 0, "used_memory": "7295mi", "start": 8812}]}

A device may also give ``"temperature"`` (degrees C, 0-300) and ``"utilization"`` (percent),
which only monitors read (the flat form leaves them out: the stand-ins report constants).

``parse_machine`` is the only reader of that JSON. The stand-ins for NVIDIA's tools (C, in
``standins/``) do not parse it: beside it the writer puts ``PATH.flat``, the same machine
already checked, one line per device and per process, which C reads in a few lines of code.
So every view of the machine comes from this one parser. A flat file names the size and
modification time of the JSON it was made from: a JSON file edited by hand since is not
shown through the stand-ins until ``python -m genv.backends.machine_file PATH`` runs.

The processes are real host processes. An entry counts only for the very process it
described (``process_counts``): one that carries ``start`` (ticks since boot, from
``/proc/PID/stat``; of the boot ``boot_id`` when the file names one) counts only for the
process with that pid and that start; one without counts only for a process that started no
later than the file was last written. So a pid that is reused by someone else's process
after the listed one exited is never taken for it (the daemon would terminate a stranger).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from genv.domain.constants import MAX_DEVICES, MAX_START, NOT_AVAILABLE
from genv.domain.memory import MemoryFormatError, parse_memory
from genv.domain.values import value
from genv.system import procfs

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from typing import Any

ENV_VAR = "GENV_FAKE_MACHINE"
DEFAULT_NAME = "Simulated GPU"
FLAT_SUFFIX = ".flat"
FLAT_MAGIC = "genv-machine-flat 1"
# NVML's buffers hold 96 bytes with the terminating NUL: a longer uuid is an error, a longer
# name is cut (as NVIDIA's tools cut names).
TEXT_BYTES = 95
# Far beyond any real machine; they bound the work and memory of every reader.
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_PROCESSES = 1 << 20
_BOOT_ID = re.compile(r"[!-~]{1,63}")


def default_uuid(index: int) -> str:
    """The UUID of a simulated device that names none: stable, so records keyed by UUID hold."""
    return f"GPU-00000000-0000-0000-0000-{index:012x}"


class MachineFileError(ValueError):
    """The machine file cannot be read or breaks a rule; the message is one line."""


@value
class ProcessSpec:
    """One process entry: ``used_memory`` None is unknown, ``start`` None was not recorded."""

    pid: int
    device: int
    used_memory: int | None
    start: int | None = None


@value
class MachineSpec:
    """The machine file, checked: devices in index order and the process entries."""

    devices: tuple[tuple[str, str, int], ...]  # (uuid, name, total_memory) by index
    processes: tuple[ProcessSpec, ...]
    boot_id: str | None = None  # the boot the starts were taken in
    # (temperature, utilization) by index, each None when the entry gives none; for monitors
    telemetry: tuple[tuple[int | None, int | None], ...] = ()


# -- the one parser ---------------------------------------------------------------------


def parse_machine(data: object) -> MachineSpec:
    """Check the machine document's shape; ``ValueError`` says what is wrong and where."""
    if not isinstance(data, dict):
        raise ValueError('expected a JSON object with a "devices" list')
    raw_devices = data.get("devices")
    if not isinstance(raw_devices, list):
        raise ValueError('"devices" must be a list of objects with "total_memory"')
    if len(raw_devices) > MAX_DEVICES:
        raise ValueError(f'"devices" lists {len(raw_devices)} devices, more than {MAX_DEVICES}')
    boot_id = _text(data.get("boot_id"), "boot_id")
    if boot_id is not None and not _BOOT_ID.fullmatch(boot_id):
        raise ValueError("boot_id must be up to 63 printable ASCII characters, no blanks")
    devices: list[tuple[str, str, int]] = []
    telemetry: list[tuple[int | None, int | None]] = []
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
        if len(uuid.encode()) > TEXT_BYTES:
            raise ValueError(f"{where}.uuid is longer than {TEXT_BYTES} bytes")
        if uuid in seen_uuids:
            raise ValueError(f"{where}.uuid {uuid} is used by another device")
        seen_uuids.add(uuid)
        name = _cut(_text(raw.get("name"), f"{where}.name") or DEFAULT_NAME)
        devices.append((uuid, name, total))
        telemetry.append(
            (
                _optional_integer(raw.get("temperature"), f"{where}.temperature", 0, 300),
                _optional_integer(raw.get("utilization"), f"{where}.utilization", 0, 100),
            )
        )
    raw_processes = data.get("processes", [])
    if raw_processes is None:
        raw_processes = []
    if not isinstance(raw_processes, list):
        raise ValueError('"processes" must be a list of objects with "pid" and "device"')
    if len(raw_processes) > MAX_PROCESSES:
        raise ValueError(f'"processes" lists more than {MAX_PROCESSES} entries')
    processes: list[ProcessSpec] = []
    seen: set[tuple[int, int]] = set()
    for index, raw in enumerate(raw_processes):
        where = f"processes[{index}]"
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be an object")
        pid = _integer(raw.get("pid"), f"{where}.pid", 1, NOT_AVAILABLE - 1)
        device = _integer(raw.get("device"), f"{where}.device", 0, NOT_AVAILABLE - 1)
        if (pid, device) in seen:
            raise ValueError(f"{where}: process {pid} is already listed on device {device}")
        seen.add((pid, device))
        used = _memory(raw.get("used_memory"), f"{where}.used_memory")
        start = raw.get("start")
        if start is not None:
            start = _integer(start, f"{where}.start", 0, MAX_START)
        processes.append(ProcessSpec(pid, device, used, start))
    return MachineSpec(tuple(devices), tuple(processes), boot_id, tuple(telemetry))


def load_machine(data: bytes) -> MachineSpec:
    """The machine in a file's bytes; ``ValueError`` with one line when it is not one."""
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"is not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:
        raise ValueError("is not valid JSON: nested too deeply") from None
    except ValueError as error:  # a number of thousands of digits
        raise ValueError(f"is not valid JSON: {str(error).split(':')[0]}") from None
    return parse_machine(document)


def read_machine(path: Path) -> tuple[MachineSpec, os.stat_result]:
    """The machine at ``path`` and the status of the file it was read from."""
    try:
        with open(path, "rb") as file:
            status = os.fstat(file.fileno())
            if status.st_size > MAX_FILE_BYTES:
                raise MachineFileError(
                    f"simulated machine file {path} is larger than {MAX_FILE_BYTES} bytes"
                )
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise MachineFileError(
            f"simulated machine file {path} does not exist: create it or fix {ENV_VAR}"
        ) from None
    except OSError as error:
        raise MachineFileError(
            f"cannot read simulated machine file {path}: {error.strerror or error}"
        ) from None
    try:
        return load_machine(data), status
    except ValueError as error:
        text = str(error)
        joined = f" {text}" if text.startswith("is ") else f": {text}"
        raise MachineFileError(f"simulated machine file {path}{joined}") from None


def _memory(value: object, where: str) -> int | None:
    """Bytes from a memory string (``80gi``) or a plain integer; None stays None (unknown)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{where} must be a memory amount such as 80gi, not {value!r}")
    if isinstance(value, int):
        amount = value
    elif isinstance(value, str):
        try:
            amount = parse_memory(value)
        except MemoryFormatError as error:
            raise ValueError(f"{where}: {error}") from None
    else:
        raise ValueError(f"{where} must be a memory amount such as 80gi, not {_shown(value)}")
    if amount < 0:
        raise ValueError(f"{where} must not be negative")
    if amount >= NOT_AVAILABLE:
        raise ValueError(f"{where} is too large (at most {NOT_AVAILABLE - 1} bytes)")
    return amount


def _integer(value: object, where: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be a whole number, not {_shown(value)}")
    if value < minimum:
        raise ValueError(f"{where} must be at least {minimum}, not {value}")
    if value > maximum:
        raise ValueError(f"{where} must be at most {maximum}")
    return value


def _optional_integer(value: object, where: str, minimum: int, maximum: int) -> int | None:
    return None if value is None else _integer(value, where, minimum, maximum)


def _text(value: object, where: str) -> str | None:
    """A string field: blanks around it dropped, blank or null meaning none."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, not {_shown(value)}")
    text = value.strip()
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError(f"{where} must not hold control characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where} is not valid Unicode (a lone surrogate)") from None
    return text or None


def _cut(text: str) -> str:
    """``text`` in NVML's 95 bytes, cut between characters."""
    encoded = text.encode()
    if len(encoded) <= TEXT_BYTES:
        return text
    return encoded[:TEXT_BYTES].decode("utf-8", "ignore")


def _shown(value: object) -> str:
    """A value for an error line: short, whatever it is."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- which process an entry describes ------------------------------------------------------


def written_tick(mtime_ns: int) -> int:
    """The last clock tick since boot in which a process could have started before a file
    with this modification time was written.

    File times are coarse (the kernel's tick), so one tick of slack is given: a process
    started in the tick after the time the file shows may still be the one it lists.
    """
    offset = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    return (mtime_ns - offset) * procfs.clock_ticks() // 1_000_000_000 + 1


def process_counts(entry: ProcessSpec, boot_id: str | None, written: int) -> bool:
    """Whether ``entry`` describes a process that runs now (the rule every reader applies).

    The process with the entry's pid must exist and not be a zombie, and be the very one the
    entry was written for: of the entry's start (and of this boot, when the file names the
    boot), or, when no start was recorded or no boot named, started by tick ``written``.
    """
    stat = procfs.read_stat(entry.pid)
    if stat is None or stat.dead:
        return False
    if entry.start is not None:
        if stat.start != entry.start:
            return False
        if boot_id is not None:
            return boot_id == procfs.boot_id()
    return stat.start <= written


# -- the flat form, for the stand-ins ------------------------------------------------------


def flat_path(path: str | os.PathLike[str]) -> Path:
    return Path(os.fspath(path) + FLAT_SUFFIX)


def _field(text: str) -> str:
    """Text as one space-free token: every byte outside ``!``..``~``, and ``%``, as %XX."""
    import urllib.parse  # here: readers of the machine file need none of the writer's imports

    return urllib.parse.quote(text.encode(), safe="!\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def flat_text(machine: MachineSpec, size: int, mtime_ns: int) -> str:
    """The flat form of ``machine``, made from a JSON file of this size and time::

    genv-machine-flat 1
    json SIZE MTIME_NS
    boot BOOT_ID|-
    devices N
    TOTAL UUID NAME                  (N lines; text %-encoded; index = position)
    processes M
    DEVICE PID USED|- START|-        (M lines)
    end
    """
    lines = [FLAT_MAGIC, f"json {size} {mtime_ns}", f"boot {machine.boot_id or '-'}"]
    lines.append(f"devices {len(machine.devices)}")
    lines += [f"{total} {_field(uuid)} {_field(name)}" for uuid, name, total in machine.devices]
    lines.append(f"processes {len(machine.processes)}")
    lines += [
        f"{p.device} {p.pid} {'-' if p.used_memory is None else p.used_memory} "
        f"{'-' if p.start is None else p.start}"
        for p in machine.processes
    ]
    lines.append("end")
    return "\n".join(lines) + "\n"


def flat_error_text(message: str, size: int, mtime_ns: int) -> str:
    """A flat file that says the JSON of this size and time is not a valid machine."""
    shown = "".join(c if c.isprintable() else "?" for c in message)[:1000]
    return f"{FLAT_MAGIC}\njson {size} {mtime_ns}\nerror {_field(shown)}\nend\n"


# -- the one writer ----------------------------------------------------------------------


def write_machine(
    path: str | os.PathLike[str],
    devices: Iterable[Mapping[str, Any]],
    processes: Iterable[Mapping[str, Any]] = (),
    mode: int = 0o644,
) -> MachineSpec:
    """Write the machine file (and its flat form) atomically; returns what was written.

    ``devices`` and ``processes`` are entries as in the file (``{"total_memory": "80gi"}``,
    ``{"pid": 12, "device": 0, "used_memory": "1gi"}``). A process entry without a
    ``"start"`` key gets the start of the process that has its pid now, and the file this
    boot's id; an entry whose pid runs no process is written without start (so no process
    that starts later is taken for it). ``"start": None`` writes an entry without start.
    Invalid entries raise ``ValueError`` and nothing is written.
    """
    entries = []
    for raw in processes:
        entry = dict(raw)
        if "start" not in entry:
            pid = entry.get("pid")
            entry["start"] = None
            if isinstance(pid, int) and procfs.valid_pid(pid):
                entry["start"] = procfs.start_of(pid)
        if entry["start"] is None:
            del entry["start"]
        entries.append(entry)
    document = {
        "boot_id": procfs.boot_id() or None,
        "devices": [dict(device) for device in devices],
        "processes": entries,
    }
    machine = parse_machine(document)
    target = Path(path)
    data = json.dumps(document, separators=(",", ":")).encode()
    # The time of writing, to the nanosecond (the kernel's own is coarse), and strictly later
    # than the file it replaces, so that readers that cache by time notice.
    now, previous = time.time_ns(), _mtime_ns(target)
    mtime_ns = previous + 1000 if previous is not None and now <= previous < now + 10**9 else now
    size, mtime_ns = _replace(target, data, mode, mtime_ns)
    _replace(flat_path(target), flat_text(machine, size, mtime_ns).encode(), mode, None)
    return machine


def compile_machine(path: str | os.PathLike[str]) -> str | None:
    """Write the flat form of the JSON file at ``path`` (made by hand, say).

    Returns None, or the reason the file is not a valid machine; the flat file then carries
    that reason, and the stand-ins show it.
    """
    target = Path(path)
    try:
        machine, status = read_machine(target)
    except MachineFileError as error:
        status_now = _stat(target)
        if status_now is None:
            return str(error)
        text = flat_error_text(str(error), status_now.st_size, status_now.st_mtime_ns)
        mode = status_now.st_mode & 0o777
        _replace(flat_path(target), text.encode(), mode, None)
        return str(error)
    text = flat_text(machine, status.st_size, status.st_mtime_ns)
    _replace(flat_path(target), text.encode(), status.st_mode & 0o777, None)
    return None


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


def _mtime_ns(path: Path) -> int | None:
    status = _stat(path)
    return None if status is None else status.st_mtime_ns


def _replace(path: Path, data: bytes, mode: int, mtime_ns: int | None) -> tuple[int, int]:
    """Put ``data`` at ``path`` through a fresh temporary file renamed over it.

    The temporary file is created exclusively (``mkstemp``), so nothing planted in a shared
    folder is followed. Returns the size and modification time the file has.
    """
    import tempfile

    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fchmod(file.fileno(), mode)
            if mtime_ns is not None:
                os.utime(file.fileno(), ns=(mtime_ns, mtime_ns))
            status = os.fstat(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return status.st_size, status.st_mtime_ns


def main(argv: list[str] | None = None) -> int:
    """``python -m genv.backends.machine_file PATH...``: write each file's flat form."""
    import sys

    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m genv.backends.machine_file MACHINE.json...", file=sys.stderr)
        return 2
    status = 0
    for path in paths:
        problem = compile_machine(path)
        if problem is not None:
            print(problem, file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
