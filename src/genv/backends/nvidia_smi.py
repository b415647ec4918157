"""The fallback backend: the real ``nvidia-smi`` and its CSV query forms only.

It costs a process per query (10-20 ms at best, seconds on busy hosts), so NVML is preferred;
this one is for hosts where the library cannot be loaded in-process. The parsing is kept in
pure functions so it is tested on real output without a GPU.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence

from genv.backends.base import BackendError
from genv.domain.models import Device, GpuProcess, GpuSnapshot

GPU_QUERY = (
    "--query-gpu=index,uuid,name,memory.total,memory.used",
    "--format=csv,noheader,nounits",
)
APPS_QUERY = (
    "--query-compute-apps=gpu_uuid,pid,used_gpu_memory",
    "--format=csv,noheader,nounits",
)
MIB = 1024**2
# Pids a binding that does not match the driver reports; never act on them.
GARBAGE_PIDS = frozenset({0, 4294967295})
TIMEOUT_S = 60.0
_NO_DEVICES = "no devices were found"


def parse_mib(field: str) -> int | None:
    """Bytes from a ``nounits`` MiB field; None for ``[N/A]``, ``[Not Supported]`` and the like."""
    text = field.strip()
    if not text or text.startswith("[") or text.upper() in {"N/A", "NA"}:
        return None
    try:
        value = int(float(text))
    except ValueError:
        return None
    return value * MIB if value >= 0 else None


def _lines(text: str) -> Iterable[str]:
    for line in text.splitlines():
        line = line.strip()
        if line and not line.lower().startswith(("no running processes", _NO_DEVICES)):
            yield line


def parse_gpus(text: str) -> tuple[list[Device], list[str]]:
    """Devices from ``--query-gpu=index,uuid,name,memory.total,memory.used`` output.

    The name is whatever lies between the uuid and the two memory fields, so a name with
    spaces (or even commas) survives. A line that cannot be read becomes an error, not a crash.
    """
    devices: list[Device] = []
    errors: list[str] = []
    for line in _lines(text):
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < 5:
            errors.append(f"nvidia-smi: cannot read GPU line {line!r}")
            continue
        index_text, uuid = fields[0], fields[1]
        name = ", ".join(fields[2:-2])
        try:
            index = int(index_text)
        except ValueError:
            errors.append(f"nvidia-smi: cannot read GPU line {line!r}")
            continue
        if not uuid or uuid.startswith("["):
            errors.append(f"device {index}: no UUID reported ({uuid or 'empty'})")
            continue
        total = parse_mib(fields[-2])
        used = parse_mib(fields[-1])
        if total is None:
            errors.append(f"device {index}: total memory not reported ({fields[-2]})")
            total = 0
        devices.append(Device(index, uuid, name, total, used))
    return devices, errors


def parse_apps(text: str) -> tuple[list[tuple[str, int, int | None]], list[str]]:
    """``(gpu_uuid, pid, used bytes or None)`` from ``--query-compute-apps`` output.

    Garbage pids (0, 4294967295) are dropped; no processes means empty output.
    """
    apps: list[tuple[str, int, int | None]] = []
    errors: list[str] = []
    for line in _lines(text):
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < 3:
            errors.append(f"nvidia-smi: cannot read process line {line!r}")
            continue
        uuid, pid_text, used_text = fields[0], fields[1], fields[-1]
        try:
            pid = int(pid_text)
        except ValueError:
            errors.append(f"nvidia-smi: cannot read process line {line!r}")
            continue
        if pid in GARBAGE_PIDS or pid < 0:
            continue
        apps.append((uuid, pid, parse_mib(used_text)))
    return apps, errors


def build_snapshot(gpu_text: str, apps_text: str | None) -> GpuSnapshot:
    """The snapshot from both outputs; ``apps_text`` None means processes were not asked for.

    Processes are tied to devices by UUID, since indices can change; a process on a UUID that
    is not in the device list (the list changed between the two calls) is reported in errors.
    """
    devices, errors = parse_gpus(gpu_text)
    processes: dict[tuple[str, int], GpuProcess] = {}
    if apps_text is not None:
        by_uuid = {device.uuid: device for device in devices}
        apps, app_errors = parse_apps(apps_text)
        errors.extend(app_errors)
        for uuid, pid, used in apps:
            device = by_uuid.get(uuid)
            if device is None:
                errors.append(f"nvidia-smi: process {pid} is on unknown GPU {uuid}")
                continue
            previous = processes.get((uuid, pid))
            if previous is not None and (used is None or (previous.used_memory or 0) >= used):
                continue
            processes[(uuid, pid)] = GpuProcess(pid, device.index, uuid, used)
    return GpuSnapshot(tuple(devices), tuple(processes.values()), tuple(errors))


def first_line(*texts: str | None) -> str:
    """The first non-blank line of the first text that has one: nvidia-smi's own words."""
    for text in texts:
        for line in (text or "").splitlines():
            if line.strip():
                return line.strip()
    return ""


class NvidiaSmiBackend:
    """Runs ``nvidia-smi`` from PATH with ``GENV_BYPASS=1``, so a genv shim steps aside."""

    name = "nvidia-smi"

    def __init__(self, executable: str = "nvidia-smi", timeout: float = TIMEOUT_S) -> None:
        self.executable = executable
        self.timeout = timeout

    def snapshot(self, processes: bool = True) -> GpuSnapshot:
        """One ``--query-gpu`` call and, when asked, one ``--query-compute-apps`` call."""
        gpu_text = self._run(GPU_QUERY)
        if gpu_text is None:
            return GpuSnapshot((), ())
        apps_text: str | None = None
        errors: list[str] = []
        if processes:
            try:
                apps_text = self._run(APPS_QUERY) or ""
            except BackendError as error:
                errors.append(f"cannot list GPU processes: {error}")
                apps_text = ""
        snapshot = build_snapshot(gpu_text, apps_text if processes else None)
        if errors:
            snapshot = GpuSnapshot(
                snapshot.devices, snapshot.processes, snapshot.errors + tuple(errors)
            )
        return snapshot

    def close(self) -> None:
        """Nothing is held between calls."""

    def _run(self, arguments: Sequence[str]) -> str | None:
        """stdout of one query; None when nvidia-smi says there are no devices at all."""
        env = dict(os.environ, GENV_BYPASS="1")
        command = [self.executable, *arguments]
        try:
            result = subprocess.run(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError:
            raise BackendError(
                f"{self.executable} was not found on PATH: install the NVIDIA driver, or set "
                "GENV_GPU_BACKEND=fake GENV_FAKE_MACHINE=machine.json to simulate a machine "
                "(see README)"
            ) from None
        except subprocess.TimeoutExpired:
            raise BackendError(
                f"{self.executable} did not answer within {self.timeout:g} seconds: "
                "check the NVIDIA driver, or try GENV_GPU_BACKEND=nvml"
            ) from None
        except OSError as error:
            raise BackendError(f"cannot run {self.executable}: {error.strerror or error}") from None
        if result.returncode != 0:
            message = first_line(result.stderr, result.stdout)
            if message.lower().startswith(_NO_DEVICES):
                return None
            raise BackendError(
                f"{self.executable} failed (exit {result.returncode}): {message or 'no message'}"
            )
        return result.stdout
