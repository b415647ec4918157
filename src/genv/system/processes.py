"""Process facts the store and the enforcer need, read through psutil."""

from __future__ import annotations

import os
import re

import psutil

# Two reads of one process's start time agree exactly; a reused pid starts later.
START_TIME_TOLERANCE = 0.05

_KERNEL_FILE = re.compile(r"kernel-([0-9A-Za-z_\-]+)\.json")


def start_time(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), or None when there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except (psutil.AccessDenied, ValueError):
        return None


def is_running(pid: int, started: float | None) -> bool:
    """Whether the very process that started at ``started`` still runs (not a reuse of its pid)."""
    if started is None:
        return psutil.pid_exists(pid)
    current = start_time(pid)
    return current is not None and abs(current - started) <= START_TIME_TOLERANCE


def running_kernel_ids() -> set[str]:
    """Ids of the Jupyter kernels running on this machine, from their connection file argument."""
    kernels: set[str] = set()
    for process in psutil.process_iter(["cmdline"]):
        for argument in process.info.get("cmdline") or ():
            match = _KERNEL_FILE.search(argument)
            if match:
                kernels.add(match.group(1))
    return kernels


def process_uid(pid: int) -> int | None:
    """The real uid of ``pid``, or None when there is no such process."""
    try:
        return psutil.Process(pid).uids().real
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


def current_uid() -> int:
    return os.getuid()
