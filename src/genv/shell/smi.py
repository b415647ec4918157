"""The nvidia-smi an environment sees: its attached devices, its own processes, its memory.

The shim (``genv/shims/nvidia-smi``) runs this inside an environment. Devices and processes come
from genv's backend, so it works wherever genv does (NVML, nvidia-smi, a simulated machine).
It draws the plain table and answers ``-L`` and the CSV query forms itself; any other arguments
go to the real nvidia-smi unchanged. A process belongs to the environment when it is registered
in it or carries ``GENV_ENVIRONMENT_ID`` with the environment's id.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from genv.domain.memory import parse_memory
from genv.domain.models import Device, GpuProcess
from genv.shell import session
from genv.system.processes import environment_claim

MIB = 1024**2
NO_DEVICES = "No devices were found"
NO_DEVICES_EXIT = 6  # what nvidia-smi exits with when it finds no device
WIDTH = 89  # inside the table's borders, as nvidia-smi draws it
RIGHT = 26  # the memory column

# field -> (csv header, canonical name); aliases map to the same canonical name
GPU_FIELDS = {
    "index": "index",
    "uuid": "uuid",
    "gpu_uuid": "uuid",
    "name": "name",
    "gpu_name": "name",
    "count": "count",
    "memory.total": "memory.total [MiB]",
    "memory.used": "memory.used [MiB]",
    "memory.free": "memory.free [MiB]",
}
APP_FIELDS = {
    "pid": "pid",
    "process_name": "process_name",
    "name": "process_name",
    "gpu_uuid": "gpu_uuid",
    "gpu_name": "gpu_name",
    "used_gpu_memory": "used_gpu_memory [MiB]",
    "used_memory": "used_gpu_memory [MiB]",
}


@dataclass
class Request:
    """What was asked: a table, a list, or a CSV query of GPUs or compute apps."""

    list_gpus: bool = False
    query_gpu: list[str] | None = None
    query_apps: list[str] | None = None
    format: list[str] = field(default_factory=list)
    ids: list[str] | None = None


@dataclass(frozen=True)
class View:
    """The environment's part of the machine."""

    eid: str
    name: str | None
    devices: tuple[Device, ...]
    totals: dict[int, int]  # device index -> total memory shown (the capacity when set)
    processes: tuple[GpuProcess, ...]


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    eid = session.current_eid()
    if eid is None or os.environ.get(session.BYPASS) == "1":
        return passthrough(argv)
    request = parse(argv)
    if request is None:
        return passthrough(argv)
    view = environment_view(eid)
    if request.ids is not None:
        wanted = set(request.ids)
        view = _only(view, [d for d in view.devices if str(d.index) in wanted or d.uuid in wanted])
    if request.query_gpu is not None or request.query_apps is not None:
        return query(view, request)
    if not view.devices:
        print(NO_DEVICES)
        return NO_DEVICES_EXIT
    if request.list_gpus:
        for device in view.devices:
            print(f"GPU {device.index}: {device.name} (UUID: {device.uuid})")
        return 0
    sys.stdout.write(table(view))
    return 0


def parse(argv: Sequence[str]) -> Request | None:
    """The request, or None when any argument is one the shim leaves to the real nvidia-smi."""
    request = Request()
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, has_value, value = arg.partition("=")
        if name in ("--query-gpu", "--query-compute-apps", "--format", "-i", "--id"):
            if not has_value:
                if not args:
                    return None
                value = args.pop(0)
            items = [item.strip() for item in value.split(",") if item.strip()]
            if name == "--query-gpu":
                request.query_gpu = items
            elif name == "--query-compute-apps":
                request.query_apps = items
            elif name == "--format":
                request.format = [item.lower() for item in items]
            else:
                request.ids = items
        elif arg in ("-L", "--list-gpus"):
            request.list_gpus = True
        else:
            return None
    if request.query_gpu is not None and request.query_apps is not None:
        return None
    return request


# -- the environment's view -----------------------------------------------------------------


def environment_view(eid: str) -> View:
    from genv.backends import open_backend
    from genv.store import Store

    env, indices = session.environment(Store(), eid)
    snapshot = open_backend().snapshot()
    attached = set(indices)
    devices = tuple(d for d in snapshot.devices if d.index in attached)
    capacity = parse_memory(env.config.gpu_memory) if env.config.gpu_memory else None
    totals = {
        d.index: d.total_memory if capacity is None else min(capacity, d.total_memory)
        for d in devices
    }
    registered = set(env.pids)
    mine = tuple(
        p for p in snapshot.processes
        if p.device_index in attached and (p.pid in registered or belongs_to(p.pid, eid))
    )
    return View(eid, env.config.name, devices, totals, mine)


def belongs_to(pid: int, eid: str) -> bool:
    """Whether ``pid`` carries this environment's id; unreadable means not ours to show."""
    claim = environment_claim(pid)
    return claim is not None and claim[0] == eid


def _only(view: View, devices: list[Device]) -> View:
    kept = {d.index for d in devices}
    return View(view.eid, view.name, tuple(devices), view.totals,
                tuple(p for p in view.processes if p.device_index in kept))


def used(view: View, index: int) -> int:
    return sum(p.used_memory or 0 for p in view.processes if p.device_index == index)


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            first = file.read().split(b"\0", 1)[0]
        if first:
            return first.decode(errors="replace")
        with open(f"/proc/{pid}/comm", "rb") as file:
            return file.read().strip().decode(errors="replace")
    except OSError:
        return "[Not Found]"


# -- CSV queries ----------------------------------------------------------------------------


def query(view: View, request: Request) -> int:
    fmt = request.format
    if not fmt or fmt[0] != "csv":
        print('nvidia-smi: the query needs --format=csv (with "noheader" and "nounits" '
              "as options)", file=sys.stderr)
        return 2
    gpu = request.query_gpu is not None
    fields = request.query_gpu if gpu else request.query_apps
    known = GPU_FIELDS if gpu else APP_FIELDS
    if not fields:
        print("nvidia-smi: the query names no field", file=sys.stderr)
        return 2
    unknown = [name for name in fields if name not in known]
    if unknown:
        return filtered_real(view, gpu, fields, ",".join(fmt), unknown)
    if gpu and not view.devices:
        print(NO_DEVICES)
        return NO_DEVICES_EXIT
    units = "nounits" not in fmt
    lines = []
    if "noheader" not in fmt:
        lines.append(", ".join(known[name] for name in fields))
    if gpu:
        for device in view.devices:
            lines.append(", ".join(_gpu_value(view, device, name, units) for name in fields))
    else:
        by_index = {d.index: d for d in view.devices}
        for process in view.processes:
            device = by_index[process.device_index]
            lines.append(", ".join(_app_value(process, device, name, units) for name in fields))
    if lines:
        print("\n".join(lines))
    return 0


def _mib(amount: int | None, units: bool) -> str:
    if amount is None:
        return "[N/A]"
    return f"{amount // MIB} MiB" if units else str(amount // MIB)


def _gpu_value(view: View, device: Device, name: str, units: bool) -> str:
    canonical = GPU_FIELDS[name].split(" ")[0]
    total = view.totals[device.index]
    if canonical == "index":
        return str(device.index)
    if canonical == "uuid":
        return device.uuid
    if canonical == "name":
        return device.name
    if canonical == "count":
        return str(len(view.devices))
    if canonical == "memory.total":
        return _mib(total, units)
    if canonical == "memory.used":
        return _mib(used(view, device.index), units)
    return _mib(max(total - used(view, device.index), 0), units)


def _app_value(process: GpuProcess, device: Device, name: str, units: bool) -> str:
    canonical = APP_FIELDS[name].split(" ")[0]
    if canonical == "pid":
        return str(process.pid)
    if canonical == "process_name":
        return process_name(process.pid)
    if canonical == "gpu_uuid":
        return device.uuid
    if canonical == "gpu_name":
        return device.name
    return _mib(process.used_memory, units)


def filtered_real(view: View, gpu: bool, fields: list[str], fmt: str, unknown: list[str]) -> int:
    """Fields the shim cannot compute: ask the real nvidia-smi, keep the environment's rows.

    The query is widened with the device UUID (and the pid for processes) in front, which
    decide what is kept and are then cut off again.
    """
    real = find_real()
    if real is None:
        print(f"nvidia-smi: genv's shim cannot show {', '.join(unknown)} and no real "
              "nvidia-smi is on PATH", file=sys.stderr)
        return 2
    keys = ["uuid"] if gpu else ["gpu_uuid", "pid"]
    option = "--query-gpu=" if gpu else "--query-compute-apps="
    result = subprocess.run(
        [real, option + ",".join(keys + fields), f"--format={fmt}"],
        capture_output=True, text=True, env=_bypass_env(), check=False,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stderr or result.stdout)
        return result.returncode
    uuids = {d.uuid for d in view.devices}
    pids = {str(p.pid) for p in view.processes}
    lines = result.stdout.splitlines()
    header = "noheader" not in fmt.split(",")
    out = []
    for number, line in enumerate(lines):
        parts = line.split(", ", len(keys))
        if len(parts) <= len(keys):
            continue
        is_header = header and number == 0
        if is_header or (parts[0].strip() in uuids and (gpu or parts[1].strip() in pids)):
            out.append(parts[-1])
    if gpu and not uuids:
        print(NO_DEVICES)
        return NO_DEVICES_EXIT
    if out:
        print("\n".join(out))
    return 0


# -- the table ------------------------------------------------------------------------------


def table(view: View) -> str:
    """A table in nvidia-smi's style, of the environment's devices and processes only.

    Memory is what the environment's processes use, out of its capacity when it has one.
    """
    rule = "+" + "-" * WIDTH + "+"
    title = f"genv environment {view.eid}" + (f" ({view.name})" if view.name else "")
    left = WIDTH - RIGHT - 1
    split = "+" + "-" * left + "+" + "-" * RIGHT + "+"
    lines = [
        time.strftime("%a %b %d %H:%M:%S %Y"),
        rule,
        _row(f" NVIDIA-SMI (genv)   {title}"),
        split,
        "|" + _fit(" GPU  Name", left) + "|" + "Memory-Usage ".rjust(RIGHT) + "|",
        "|" + _fit("      UUID", left) + "|" + " " * RIGHT + "|",
        "|" + "=" * left + "+" + "=" * RIGHT + "|",
    ]
    for number, device in enumerate(view.devices):
        if number:
            lines.append(split)
        memory = f"{used(view, device.index) // MIB}MiB / {view.totals[device.index] // MIB}MiB "
        lines.append("|" + _fit(f" {device.index:>3}  {device.name}", left) + "|"
                     + memory.rjust(RIGHT) + "|")
        lines.append("|" + _fit(f"      {device.uuid}", left) + "|" + " " * RIGHT + "|")
    lines += [
        split,
        "",
        rule,
        _row(" Processes:"),
        _row(_process_line("GPU", "PID", "Process name", "GPU Memory")),
        _row(_process_line("", "", "", "Usage     ")),
        "|" + "=" * WIDTH + "|",
    ]
    if not view.processes:
        lines.append(_row("  No running processes found"))
    for process in sorted(view.processes, key=lambda p: (p.device_index, p.pid)):
        memory = "N/A" if process.used_memory is None else f"{process.used_memory // MIB}MiB"
        lines.append(_row(_process_line(str(process.device_index), str(process.pid),
                                        process_name(process.pid), memory)))
    lines.append(rule)
    return "\n".join(lines) + "\n"


def _process_line(gpu: str, pid: str, name: str, memory: str) -> str:
    start = f"  {gpu:>3}  {pid:>9}   "
    return start + _fit(name, WIDTH - len(start) - 13) + memory.rjust(12) + " "


def _fit(text: str, width: int) -> str:
    """``text`` padded or cut to ``width``, cut from the left so a path keeps its name."""
    if len(text) <= width:
        return text.ljust(width)
    return "..." + text[len(text) - width + 3:]


def _row(text: str) -> str:
    return "|" + _fit(text, WIDTH) + "|"


# -- passing through ------------------------------------------------------------------------


def find_real() -> str | None:
    """The first nvidia-smi on PATH that is not a genv shim."""
    shim = os.path.join(session.shims_dir(), "nvidia-smi")
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(folder or ".", "nvidia-smi")
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        try:
            if os.path.samefile(candidate, shim):
                continue
        except OSError:
            continue
        return candidate
    return None


def _bypass_env() -> dict[str, str]:
    return {**os.environ, session.BYPASS: "1"}


def passthrough(argv: Sequence[str]) -> int:
    """Run the real nvidia-smi with the arguments unchanged (this process becomes it)."""
    real = find_real()
    if real is None:
        print("nvidia-smi: genv's shim passes these arguments to the real nvidia-smi, "
              "but there is none on PATH", file=sys.stderr)
        return 127
    sys.stdout.flush()
    os.execve(real, [real, *argv], _bypass_env())
    return 0  # not reached
