"""The fallback backend: the real ``nvidia-smi`` and its CSV query forms only.

It costs a process per query (10-20 ms at best, seconds on busy hosts), so NVML is preferred;
this one is for hosts where the library cannot be loaded in-process. The parsing is kept in
pure functions so it is tested on real output without a GPU.

nvidia-smi hangs when the driver does (a GPU falling off the bus, a stuck kernel module), so
a snapshot has a deadline (``GENV_NVIDIA_SMI_TIMEOUT``, 10 s by default): past it, nvidia-smi
is killed and, should it not even die (a process stuck in the kernel), left behind, so the
daemon's cycle goes on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence

from genv.backends.errors import BackendError
from genv.domain.constants import GARBAGE_PIDS
from genv.domain.memory import MIB
from genv.domain.models import Device, DeviceTelemetry, GpuProcess, GpuSnapshot
from genv.system.procfs import valid_pid

GPU_QUERY = (
    "--query-gpu=index,uuid,name,memory.total,memory.used",
    "--format=csv,noheader,nounits",
)
APPS_QUERY = (
    "--query-compute-apps=gpu_uuid,pid,used_gpu_memory",
    "--format=csv,noheader,nounits",
)
TELEMETRY_QUERY = (
    "--query-gpu=index,temperature.gpu,utilization.gpu",
    "--format=csv,noheader,nounits",
)
# Pids a binding that does not match the driver reports; never act on them.
TIMEOUT_VAR = "GENV_NVIDIA_SMI_TIMEOUT"
TIMEOUT_S = 10.0
KILL_WAIT_S = 1.0  # how long a killed nvidia-smi may take to die before it is left behind
MAX_MIB = (2**64 - 1) // MIB  # more than that is no amount a GPU reports
_NO_DEVICES = "no devices were found"


def timeout_from_environment() -> float:
    """The snapshot deadline in seconds, from ``GENV_NVIDIA_SMI_TIMEOUT`` (default 10)."""
    text = os.environ.get(TIMEOUT_VAR, "").strip()
    if not text:
        return TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise BackendError(f"{TIMEOUT_VAR}={text!r} is not a number of seconds between 0 and 3600")
    return value


def parse_mib(field: str) -> int | None:
    """Bytes from a ``nounits`` MiB field; None for ``[N/A]``, ``[Not Supported]`` and the like."""
    text = field.strip()
    if not text or text.startswith("[") or text.upper() in {"N/A", "NA"}:
        return None
    try:
        value = int(float(text))
    except (ValueError, OverflowError):  # "nan", "inf", "1e999"
        return None
    return value * MIB if 0 <= value <= MAX_MIB else None


def _lines(text: str) -> Iterable[str]:
    for line in text.splitlines():
        line = line.strip()
        if line and not line.lower().startswith(("no running processes", _NO_DEVICES)):
            yield line


def parse_gpus(text: str) -> tuple[list[Device], list[str], list[str]]:
    """Devices from ``--query-gpu=index,uuid,name,memory.total,memory.used`` output.

    The name is whatever lies between the uuid and the two memory fields, so a name with
    spaces (or even commas) survives. Returns the devices, the errors (lines that could not be
    read: a device is missing) and notes (a device without memory figures, kept).
    """
    devices: list[Device] = []
    errors: list[str] = []
    notes: list[str] = []
    for line in _lines(text):
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < 5:
            errors.append(f"nvidia-smi: cannot read GPU line {line!r}")
            continue
        index_text, uuid = fields[0], fields[1]
        name = ", ".join(fields[2:-2])
        index = _whole(index_text, 1 << 16)
        if index is None:
            errors.append(f"nvidia-smi: cannot read GPU line {line!r}")
            continue
        if not uuid or uuid.startswith("["):
            errors.append(f"device {index}: no UUID reported ({uuid or 'empty'})")
            continue
        total = parse_mib(fields[-2])
        used = parse_mib(fields[-1])
        if total is None:
            notes.append(f"device {index}: total memory not reported ({fields[-2]})")
            total = 0
        devices.append(Device(index, uuid, name, total, used))
    return devices, errors, notes


def _whole(text: str, limit: int) -> int | None:
    """A decimal whole number from 0 to ``limit``, or None."""
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        return None
    value = int(text)
    return value if value <= limit else None


def parse_telemetry(text: str) -> tuple[DeviceTelemetry, ...]:
    """``--query-gpu=index,temperature.gpu,utilization.gpu`` output; ``[N/A]`` is None and a
    line that cannot be read is left out."""
    found = []
    for line in _lines(text):
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 3 or (index := _whole(fields[0], 1 << 16)) is None:
            continue
        temperature = _whole(fields[1], 300)
        utilization = _whole(fields[2].rstrip("%").strip(), 100)
        found.append(DeviceTelemetry(index, temperature, utilization))
    return tuple(found)


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
        pid = _whole(pid_text, 2**64)
        if pid is None:
            errors.append(f"nvidia-smi: cannot read process line {line!r}")
            continue
        if pid in GARBAGE_PIDS:
            continue
        if not valid_pid(pid):
            errors.append(f"nvidia-smi: process line with pid {pid}, which no process has")
            continue
        apps.append((uuid, pid, parse_mib(used_text)))
    return apps, errors


def build_snapshot(gpu_text: str, apps_text: str | None) -> GpuSnapshot:
    """The snapshot from both outputs; ``apps_text`` None means processes were not asked for.

    Processes are tied to devices by UUID, since indices can change; a process on a UUID that
    is not in the device list (the list changed between the two calls) is reported in errors.
    Anything that could not be read makes the snapshot partial.
    """
    devices, errors, notes = parse_gpus(gpu_text)
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
    return GpuSnapshot(
        tuple(devices), tuple(processes.values()), tuple(notes + errors), bool(errors)
    )


def first_line(*texts: str | None) -> str:
    """The first non-blank line of the first text that has one: nvidia-smi's own words."""
    for text in texts:
        for line in (text or "").splitlines():
            if line.strip():
                return line.strip()
    return ""


class NvidiaSmiBackend:
    """Runs ``nvidia-smi`` from PATH with ``GENV_BYPASS=1``, so a genv shim steps aside.

    ``timeout`` (seconds; default from ``GENV_NVIDIA_SMI_TIMEOUT``, else 10) bounds a whole
    snapshot, both queries together.
    """

    name = "nvidia-smi"

    def __init__(self, executable: str = "nvidia-smi", timeout: float | None = None) -> None:
        self.executable = executable
        self.timeout = timeout_from_environment() if timeout is None else timeout

    def snapshot(self, processes: bool = True) -> GpuSnapshot:
        """One ``--query-gpu`` call and, when asked, one ``--query-compute-apps`` call."""
        deadline = time.monotonic() + self.timeout
        gpu_text = self._run(GPU_QUERY, deadline)
        if gpu_text is None:
            return GpuSnapshot((), ())
        if not processes:
            return build_snapshot(gpu_text, None)
        try:
            apps_text = self._run(APPS_QUERY, deadline) or ""
        except BackendError as error:
            snapshot = build_snapshot(gpu_text, "")
            return GpuSnapshot(
                snapshot.devices,
                (),
                (*snapshot.errors, f"cannot list GPU processes: {error}"),
                partial=True,
            )
        return build_snapshot(gpu_text, apps_text)

    def telemetry(self) -> tuple[DeviceTelemetry, ...]:
        """One more ``--query-gpu`` call, for monitors (see TelemetrySource)."""
        try:
            text = self._run(TELEMETRY_QUERY, time.monotonic() + self.timeout)
        except BackendError:
            return ()
        return parse_telemetry(text or "")

    def close(self) -> None:
        """Nothing is held between calls."""

    def _run(self, arguments: Sequence[str], deadline: float) -> str | None:
        """stdout of one query; None when nvidia-smi says there are no devices at all."""
        env = dict(os.environ, GENV_BYPASS="1")
        command = [self.executable, *arguments]
        try:
            process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                start_new_session=True,  # its own group, so all of it can be killed
            )
        except FileNotFoundError:
            raise BackendError(
                f"{self.executable} was not found on PATH: install the NVIDIA driver, or set "
                "GENV_GPU_BACKEND=fake GENV_FAKE_MACHINE=machine.json to simulate a machine "
                "(see README)"
            ) from None
        except OSError as error:
            raise BackendError(f"cannot run {self.executable}: {error.strerror or error}") from None
        try:
            stdout, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 0.01))
        except BaseException as error:
            _abandon(process)  # on a timeout, and when the daemon is told to stop meanwhile
            if not isinstance(error, subprocess.TimeoutExpired):
                raise
            raise BackendError(
                f"{self.executable} did not answer within {self.timeout:g} seconds: "
                f"check the NVIDIA driver, or try GENV_GPU_BACKEND=nvml ({TIMEOUT_VAR} sets "
                "the limit)"
            ) from None
        if process.returncode != 0:
            message = first_line(stderr, stdout)
            if message.lower().startswith(_NO_DEVICES):
                return None
            raise BackendError(
                f"{self.executable} failed (exit {process.returncode}): {message or 'no message'}"
            )
        return stdout


def _abandon(process: subprocess.Popen[str]) -> None:
    """Kill a hanging nvidia-smi (its whole group) and wait a moment for it, not longer.

    Its pid cannot have been reused: it is our child and not yet reaped. One that does not die
    (stuck in the driver) is left to the interpreter, which reaps it later.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=KILL_WAIT_S)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()
