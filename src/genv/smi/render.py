"""Drawing the environment's view as nvidia-smi would: the table and the CSV queries.

Pure functions of a View: nothing here reads /proc or runs anything.
"""

from __future__ import annotations

import sys
import time

from genv.domain.memory import MIB
from genv.domain.models import Device
from genv.smi.request import APP_FIELDS, GPU_FIELDS, Request
from genv.smi.view import View, ViewProcess

NO_DEVICES = "No devices were found"
NO_DEVICES_EXIT = 6  # what nvidia-smi exits with when it finds no device
WIDTH = 89  # inside the table's borders, as nvidia-smi draws it
RIGHT = 26  # the memory column


def used(view: View, index: int) -> int:
    return sum(p.used_memory or 0 for p in view.processes if p.device_index == index)


def query(view: View, request: Request) -> int | None:
    """Print the answer and return the exit code; None when a field needs the real tool."""
    fmt = request.format
    if not fmt or fmt[0] != "csv":
        print(
            'nvidia-smi: the query needs --format=csv (with "noheader" and "nounits" as options)',
            file=sys.stderr,
        )
        return 2
    gpu = request.query_gpu is not None
    fields = request.query_gpu if gpu else request.query_apps
    known = GPU_FIELDS if gpu else APP_FIELDS
    if not fields:
        print("nvidia-smi: the query names no field", file=sys.stderr)
        return 2
    unknown = [name for name in fields if name not in known]
    if unknown:
        return None
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


def _app_value(process: ViewProcess, device: Device, name: str, units: bool) -> str:
    canonical = APP_FIELDS[name].split(" ")[0]
    if canonical == "pid":
        return str(process.pid)
    if canonical == "process_name":
        return process.name
    if canonical == "gpu_uuid":
        return device.uuid
    if canonical == "gpu_name":
        return device.name
    return _mib(process.used_memory, units)


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
        lines.append(
            "|" + _fit(f" {device.index:>3}  {device.name}", left) + "|" + memory.rjust(RIGHT) + "|"
        )
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
        lines.append(
            _row(_process_line(str(process.device_index), str(process.pid), process.name, memory))
        )
    lines.append(rule)
    return "\n".join(lines) + "\n"


def _process_line(gpu: str, pid: str, name: str, memory: str) -> str:
    start = f"  {gpu:>3}  {pid:>9}   "
    return start + _fit(name, WIDTH - len(start) - 13) + memory.rjust(12) + " "


def _fit(text: str, width: int) -> str:
    """``text`` padded or cut to ``width``, cut from the left so a path keeps its name."""
    if len(text) <= width:
        return text.ljust(width)
    return "..." + text[len(text) - width + 3 :]


def _row(text: str) -> str:
    return "|" + _fit(text, WIDTH) + "|"
