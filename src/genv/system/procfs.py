"""Reading one process from /proc, cheaply and without trusting what it says about itself.

A process is named by its pid *and* its start: the clock ticks since boot at which it started
(field 22 of ``/proc/PID/stat``) on this boot (``/proc/sys/kernel/random/boot_id``). Unlike
psutil's ``create_time`` (boot time in wall-clock seconds plus the ticks), it does not move
when the wall clock is stepped (NTP, a VM resumed), and a pid that is reused gets a later
start. Everything a process can set about itself (its ``comm`` name, its argv, its
environment) is a claim; its owner (real uid, from ``/proc/PID/status``) and its executable
(``/proc/PID/exe``) are facts the kernel keeps.
"""

from __future__ import annotations

import functools
import os

from genv.domain import constants
from genv.domain.values import value

# The largest pid there can be: anything above is not a pid.
PID_MAX = constants.PID_MAX


@value
class ProcStat:
    """What ``/proc/PID/stat`` says: the state letter, the start in ticks since boot, and the
    command name (``comm``: what the process calls itself, at most 15 bytes)."""

    state: str
    start: int
    name: str = ""

    @property
    def dead(self) -> bool:
        """A zombie has exited (and given its GPU memory back); only its parent's wait is due."""
        return self.state in ("Z", "X", "x")


@functools.lru_cache(maxsize=1)
def boot_id() -> str:
    """This boot's id: starts recorded under another boot id name processes that are gone."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as file:
            return file.read(64).strip().decode("ascii", "replace")
    except OSError:
        return ""


@functools.lru_cache(maxsize=1)
def clock_ticks() -> int:
    """Ticks per second of the start field (USER_HZ, 100 nearly everywhere)."""
    try:
        return int(os.sysconf("SC_CLK_TCK")) or 100
    except (ValueError, OSError):
        return 100


def valid_pid(pid: object) -> bool:
    return isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid <= PID_MAX


def read_proc(path: str, limit: int = 1 << 16) -> bytes:
    """The contents of a /proc file, at most ``limit`` bytes (OSError as ``open`` raises it).

    Read with ``os.open``/``os.read``: the daemon's first cycle reads five files of every GPU
    process, and a Python file object costs several times the system calls themselves.
    """
    chunk = min(limit, 1 << 16)  # (os.read allocates what it is asked for)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, chunk)
        if len(data) < 4096 or len(data) >= limit:
            return data  # /proc hands a small file over in one read
        parts = [data]
        left = limit - len(data)
        while left > 0 and (more := os.read(fd, min(left, chunk))):
            parts.append(more)
            left -= len(more)
        return b"".join(parts)
    finally:
        os.close(fd)


def read_stat(pid: int) -> ProcStat | None:
    """State and start of ``pid``; None when there is no such process.

    The command name in the stat line is chosen by the process and may hold spaces and
    parentheses, so the fields are counted from the *last* closing parenthesis.
    """
    if not valid_pid(pid):
        return None
    try:
        data = read_proc(f"/proc/{pid}/stat")
    except OSError:
        return None
    end = data.rfind(b")")
    if end < 0:
        return None
    fields = data[end + 2 :].split()
    # After the name: state (3), ppid (4), ... starttime is field 22, i.e. index 19 here.
    if len(fields) < 20:
        return None
    try:
        return ProcStat(
            fields[0].decode("ascii", "replace"),
            int(fields[19]),
            data[data.find(b"(") + 1 : end].decode(errors="replace"),
        )
    except ValueError:
        return None


def start_of(pid: int) -> int | None:
    """The start of the live (not zombie) process ``pid``, or None when it is gone."""
    stat = read_stat(pid)
    if stat is None or stat.dead:
        return None
    return stat.start


def is_running(pid: int, start: int | None) -> bool:
    """Whether the very process ``pid`` that started at ``start`` still runs.

    ``start`` None (a record that never knew it) matches no process: a pid alone names
    whoever has it now, which may be a stranger.
    """
    if start is None:
        return False
    return start_of(pid) == start


def real_uid(pid: int) -> int | None:
    """The real uid of ``pid`` (the user who runs it), or None when it is gone.

    Not the owner of ``/proc/PID``: a process can make itself undumpable, and then that
    folder belongs to root.
    """
    if not valid_pid(pid):
        return None
    try:
        data = read_proc(f"/proc/{pid}/status")
        start = data.find(b"\nUid:")
        if start < 0:
            return None
        return int(data[start + 5 : data.find(b"\n", start + 5)].split()[0])
    except (OSError, ValueError, IndexError):
        return None


NOT_HERE = " (not the file at that path here)"


def executable(pid: int) -> str | None:
    """The resolved path of the program ``pid`` runs (``/proc/PID/exe``), or None.

    The path is the one the process sees, in its own mount namespace: anyone may make a user
    namespace, mount their own program over an admin's path there, and run it. So the path
    is given only when the file at it here is the very file the process runs (same device
    and inode); otherwise it is marked ``PATH (not the file at that path here)``. A program
    deleted since it started reads ``PATH (deleted)``. Either names no file, and so matches
    no program an admin names.
    """
    if not valid_pid(pid):
        return None
    link = f"/proc/{pid}/exe"
    try:
        path = os.readlink(link)
        runs = os.stat(link)
    except OSError:
        return None
    try:
        here = os.stat(path)
    except OSError:
        return path if path.endswith(" (deleted)") else path + NOT_HERE
    if (here.st_dev, here.st_ino) != (runs.st_dev, runs.st_ino):
        return path + NOT_HERE
    return path


@functools.lru_cache(maxsize=1)
def hides_others() -> bool:
    """Whether /proc hides other users' processes from this reader (mounted ``hidepid=``,
    and we are not root): their processes then look gone while they run."""
    if os.geteuid() == 0:
        return False
    try:
        with open("/proc/self/mountinfo", "rb") as file:
            for line in file:
                fields = line.split(b" - ", 1)
                if len(fields) != 2 or b" /proc " not in fields[0]:
                    continue
                options = fields[1].split()[-1].split(b",")
                for option in options:
                    if option.startswith(b"hidepid=") and option not in (
                        b"hidepid=0",
                        b"hidepid=off",
                    ):
                        return True
    except OSError:
        pass
    return False


def age(start: int) -> float:
    """Seconds since a process with this start began (by the boot clock, which no one sets)."""
    import time

    return time.clock_gettime(time.CLOCK_BOOTTIME) - start / clock_ticks()


def ticks_to_epoch(start: int) -> float:
    """Wall-clock seconds since the epoch at which a process with this start began: for
    showing people only, since it moves with the clock."""
    import time

    uptime = time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.time() - uptime + start / clock_ticks()
