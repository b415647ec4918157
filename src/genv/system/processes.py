"""Process facts the store and the enforcer need: liveness as an owner, the environment claim.

Liveness reads two small /proc files (genv.system.procfs); the claim reads the one variable
out of ``/proc/PID/environ``.
"""

from __future__ import annotations

import os

from genv.domain.constants import ENVIRONMENT_VARIABLE
from genv.domain.models import RegisteredProcess
from genv.system import procfs

_MARKER = b"\0" + ENVIRONMENT_VARIABLE.encode() + b"="
# A start recorded in wall-clock seconds (format 1 of the state) matches the process whose
# start, turned into wall-clock time now, is this close: /proc/stat's boot time is whole
# seconds, so the two ways of computing it differ by up to one.
LEGACY_TOLERANCE = 1.0


def registered_alive(process: RegisteredProcess, owner: int) -> bool:
    """Whether the very process registered still runs, as ``owner`` or root.

    Where /proc hides other users' processes (``hidepid``), another user's process that
    looks gone may run: it counts as running, so that its environment's devices are not
    taken for free.
    """
    if not procfs.is_running(process.pid, process.start):
        return (
            process.start is not None
            and owner != os.getuid()
            and procfs.hides_others()
            and not os.path.exists(f"/proc/{process.pid}")
        )
    return procfs.real_uid(process.pid) in (owner, 0)


def legacy_start(pid: int, wall: float) -> int | None:
    """The start of ``pid`` when it is the process that started at wall-clock time ``wall``."""
    start = procfs.start_of(pid)
    if start is None:
        return None
    return start if abs(procfs.ticks_to_epoch(start) - wall) <= LEGACY_TOLERANCE else None


# A process whose environment reads empty is in the middle of starting (the kernel shows the
# new program's environment a moment after its command line) or cleared its environment;
# for this long after its start it is given the benefit of the doubt.
YOUNG_SECONDS = 2.0
# Linux keeps a process's environment within its argument space: since 4.13 at most 6 MiB
# for arguments and environment together (three quarters of the 8 MiB stack limit it
# assumes), whatever the stack limit. A process can point its environment elsewhere
# (prctl PR_SET_MM_MAP) to cost root a large read each time it is read again; what lies
# beyond this is not looked at, which can only hide a claim of its own.
ENVIRON_LIMIT = 6 << 20


def environment_claim(pid: int) -> tuple[str | None, bool] | None:
    """The environment ``pid`` claims (``GENV_ENVIRONMENT_ID``) and whether its environment
    could be read at all; None when the process is gone (a zombie counts as gone). An empty
    environment of a process that has only just started is "could not be read" (it may not
    be in place yet); an older one cleared it, and claims nothing.

    Read straight from /proc/PID/environ and searched for the one variable: parsing every
    variable of every process into a dict was the largest part of a one-shot cycle.
    """
    try:
        data = b"\0" + procfs.read_proc(f"/proc/{pid}/environ", ENVIRON_LIMIT)
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:  # PermissionError above all: another user's process, without root
        return None, False
    if data == b"\0":  # nothing at all: a zombie, a process starting, or one that cleared it
        stat = procfs.read_stat(pid)
        if stat is None or stat.dead:
            return None
        return None, procfs.age(stat.start) >= YOUNG_SECONDS
    start = data.find(_MARKER)
    if start < 0:
        return None, True
    start += len(_MARKER)
    end = data.find(b"\0", start)
    value = data[start:] if end < 0 else data[start:end]
    return value.decode(errors="replace") or None, True
