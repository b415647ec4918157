"""Watching a running daemon from outside: its CPU time (children included), memory, cycles.

CPU time of the daemon itself is read with nanosecond precision from each thread's
``/proc/PID/task/TID/schedstat`` when that agrees with the kernel's clock-tick total (it does
not when threads came and went in between, as genv 1.4.3's child-watcher threads do; then the
clock-tick total of ``/proc/PID/stat`` is used). Children's CPU time is the kernel's
``cutime + cstime``: every child the daemon started and reaped, with their own children.

Cycles are counted as bursts of the daemon's CPU time (its threads' ``schedstat``, read every
2 ms from outside): at ``--interval 1`` a daemon is idle for most of a second between two
cycles. (The NVML stand-in keeps the machine file open and reads it only when it changes, so
the file's opens no longer mark cycles.)
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")
BURST_GAP_S = 0.25  # CPU time further apart than this belongs to different cycles
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


class BurstCounter:
    """When a daemon runs: the moments its CPU time starts moving after at least ``gap``
    seconds without (one per cycle when nothing else wakes it). Follows ``pid`` from a
    background thread until ``close``."""

    POLL_S = 0.002

    def __init__(self, pid: int, gap: float = BURST_GAP_S) -> None:
        self.pid = pid
        self.gap = gap
        self._starts: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def __enter__(self) -> BurstCounter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            last_ns = cpu_sample(self.pid).thread_ns
        except OSError:
            return
        last_change = -float("inf")
        while not self._stop.wait(self.POLL_S):
            try:
                now_ns = cpu_sample(self.pid).thread_ns
            except (OSError, ValueError, IndexError):
                return  # it exited
            if now_ns != last_ns:
                now = time.monotonic()
                if now - last_change > self.gap:
                    with self._lock:
                        self._starts.append(now)
                last_ns, last_change = now_ns, now

    def bursts(self, start: float = 0.0, end: float = float("inf")) -> int:
        """Bursts that began within [start, end)."""
        with self._lock:
            return sum(1 for moment in self._starts if start <= moment < end)
