"""Watching a running daemon from outside: its CPU time (children included), memory, cycles.

CPU time of the daemon itself is read with nanosecond precision from each thread's
``/proc/PID/task/TID/schedstat`` when that agrees with the kernel's clock-tick total (it does
not when threads came and went in between, as genv 1.4.3's child-watcher threads do; then the
clock-tick total of ``/proc/PID/stat`` is used). Children's CPU time is the kernel's
``cutime + cstime``: every child the daemon started and reaped, with their own children.

Cycles are counted by watching the machine description with inotify: every cycle reads it
(through ``nvidia-smi`` or the NVML stand-in), and the reads of one cycle come in one burst.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")
IN_OPEN = 0x20
IN_CLOEXEC = 0o2000000
BURST_GAP_S = 0.25  # reads further apart than this belong to different cycles
IDLE_S = 0.06  # no CPU time and no children for this long: between two cycles


@dataclass(frozen=True)
class CpuSample:
    when: float
    own_ticks: int
    child_ticks: int
    thread_ns: int

    def seconds_since(self, earlier: CpuSample) -> float:
        """CPU seconds used between ``earlier`` and this sample, children included."""
        ticks = (self.own_ticks - earlier.own_ticks) / HZ
        precise = (self.thread_ns - earlier.thread_ns) / 1e9
        # clock ticks are truncated to 1/HZ at each end: within that, trust the nanoseconds
        own = precise if abs(ticks - precise) <= 2.5 / HZ else ticks
        return own + (self.child_ticks - earlier.child_ticks) / HZ


def _stat_fields(pid: int) -> list[str]:
    data = Path(f"/proc/{pid}/stat").read_text()
    return data[data.rfind(")") + 2 :].split()


def cpu_sample(pid: int) -> CpuSample:
    fields = _stat_fields(pid)  # fields[0] is the state (field 3 of proc(5))
    own = int(fields[11]) + int(fields[12])  # utime, stime
    children = int(fields[13]) + int(fields[14])  # cutime, cstime
    thread_ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            thread_ns += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return CpuSample(time.monotonic(), own, children, thread_ns)


def has_children(pid: int) -> bool:
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "children").read_text().strip():
                return True
        except OSError:
            continue
    return False


def idle_sample(pid: int, timeout: float = 120.0) -> CpuSample:
    """A sample taken between two cycles: no CPU used and no child running for ``IDLE_S``."""
    deadline = time.monotonic() + timeout
    previous = cpu_sample(pid)
    while time.monotonic() < deadline:
        time.sleep(IDLE_S)
        current = cpu_sample(pid)
        quiet = (current.thread_ns == previous.thread_ns
                 and current.child_ticks == previous.child_ticks)
        if quiet and not has_children(pid):
            return current
        previous = current
    raise TimeoutError(f"process {pid} never went idle")


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` (now) and ``VmHWM`` (peak resident) of ``pid``, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


class OpenWatcher:
    """Times at which a file in a folder is opened (inotify, read in a background thread).

    One for the whole run: the thread blocks in ``read`` for as long as the process lives.
    """

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._fd = libc.inotify_init1(IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        folder = os.fsencode(str(path.parent))
        if libc.inotify_add_watch(self._fd, folder, IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        self._name = os.fsencode(path.name)
        self._times: list[float] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 65536)
            except OSError:
                return
            now = time.monotonic()
            offset = 0
            while offset < len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
                offset += 16 + length
                if mask & IN_OPEN and name == self._name:
                    with self._lock:
                        self._times.append(now)

    def bursts(self, start: float = 0.0, end: float = float("inf")) -> int:
        """Bursts of opens (one per cycle) that began within [start, end)."""
        with self._lock:
            times = list(self._times)
        count, last = 0, None
        for moment in times:
            if last is None or moment - last > BURST_GAP_S:
                count += start <= moment < end
            last = moment
        return count
