"""Process facts the store and the enforcer need, read through psutil."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

import psutil

# Set in every process of an environment: how a process says which environment it is in.
ENVIRONMENT_VARIABLE = "GENV_ENVIRONMENT_ID"
_MARKER = b"\0" + ENVIRONMENT_VARIABLE.encode() + b"="

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


def kernel_processes() -> dict[str, tuple[int, float]]:
    """Running Jupyter kernels: id -> (pid, start time), from their connection file argument."""
    kernels: dict[str, tuple[int, float]] = {}
    for process in psutil.process_iter(["cmdline", "create_time"]):
        for argument in process.info.get("cmdline") or ():
            match = _KERNEL_FILE.search(argument)
            if match:
                kernels[match.group(1)] = (process.pid, process.info.get("create_time") or 0.0)
    return kernels


def running_kernel_ids(wanted: set[str]) -> set[str]:
    """Which of ``wanted`` run now: one scan of every process, fine for a one-off command."""
    return wanted & kernel_processes().keys()


class KernelTracker:
    """Which kernels run, for a reader that asks every few seconds (the daemon).

    Scanning every process's command line is the expensive part, so kernels found once are
    then followed by (pid, start time), and a new scan happens only when an id is asked for
    that the last scan did not look for, or every ``rescan_after`` seconds while some asked-for
    id is missing (a kernel being restarted keeps its id).
    """

    def __init__(
        self,
        is_running: Callable[[int, float | None], bool],
        rescan_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._is_running = is_running
        self._rescan_after = rescan_after
        self._clock = clock
        self._known: dict[str, tuple[int, float]] = {}
        self._looked_for: set[str] = set()
        self._last_scan = float("-inf")

    def __call__(self, wanted: set[str]) -> set[str]:
        alive = {
            kernel for kernel in wanted
            if kernel in self._known and self._is_running(*self._known[kernel])
        }
        missing = wanted - alive
        stale = self._clock() - self._last_scan >= self._rescan_after
        if missing and (missing - self._looked_for or stale):
            self._known = kernel_processes()
            self._looked_for = set(wanted)
            self._last_scan = self._clock()
            alive |= missing & self._known.keys()
        return alive


def process_uid(pid: int) -> int | None:
    """The real uid of ``pid``, or None when there is no such process."""
    try:
        return psutil.Process(pid).uids().real
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


def current_uid() -> int:
    return os.getuid()


def environment_claim(pid: int) -> tuple[str | None, bool] | None:
    """The environment ``pid`` claims (``GENV_ENVIRONMENT_ID``) and whether its environment
    could be read at all; None when the process is gone (a zombie counts as gone).

    Read straight from /proc/PID/environ and searched for the one variable: psutil's
    ``environ()`` parses every variable of every process into a dict, which was the largest
    part of a one-shot enforcement cycle.
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            data = b"\0" + environ.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:  # PermissionError above all: another user's process, without root
        return None, False
    if data == b"\0":  # nothing at all: a zombie, or a process that cleared its environment
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            return None
        except psutil.Error:
            pass
        return None, True
    start = data.find(_MARKER)
    if start < 0:
        return None, True
    start += len(_MARKER)
    end = data.find(b"\0", start)
    value = data[start:] if end < 0 else data[start:end]
    return value.decode(errors="replace") or None, True
