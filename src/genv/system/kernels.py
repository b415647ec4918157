"""Which Jupyter kernels run, and as whom.

A kernel is found by its connection file, ``kernel-<id>.json``, which Jupyter passes on the
kernel's command line. A command line is a claim anyone can make (``sleep 1 kernel-X.json``),
so a kernel counts for an environment only when its process runs as the environment's owner
(or root): no one keeps another user's environment alive by posing as its kernel.
"""

from __future__ import annotations

import os
import re
import time
from collections import defaultdict
from collections.abc import Callable

from genv.system import procfs

_KERNEL_FILE = re.compile(rb"kernel-([0-9A-Za-z_\-]{1,128})\.json")

# kernel id -> the (pid, start, real uid) of each process that names it
KernelProcesses = dict[str, list[tuple[int, int, int]]]


def kernel_processes() -> KernelProcesses:
    """Every process whose command line names a kernel connection file: one pass over /proc."""
    found: KernelProcesses = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                cmdline = file.read(65536)
        except OSError:
            continue
        ids = {match.group(1).decode() for match in _KERNEL_FILE.finditer(cmdline)}
        if not ids:
            continue
        pid = int(entry)
        start = procfs.start_of(pid)
        uid = procfs.real_uid(pid)
        if start is None or uid is None:
            continue
        for kernel in ids:
            found[kernel].append((pid, start, uid))
    return found


def _owned(processes: list[tuple[int, int, int]], owner: int) -> list[tuple[int, int, int]]:
    return [p for p in processes if p[2] in (owner, 0)]


def running_kernels(owner: int, wanted: frozenset[str]) -> set[str]:
    """Which of ``wanted`` run as ``owner`` (or root): one scan, fine for a one-off command."""
    found = kernel_processes()
    return {kernel for kernel in wanted if _owned(found.get(kernel, []), owner)}


class KernelTracker:
    """Which kernels run, for a reader that asks every second (the daemon).

    Scanning every command line is the expensive part, so kernels found once are then
    followed by (pid, start), and a new scan happens only when an id is asked for that the
    last scan did not look for, or every ``rescan_after`` seconds while some asked-for id is
    missing (a kernel being restarted keeps its id).
    """

    def __init__(
        self,
        is_running: Callable[[int, int | None], bool],
        rescan_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._is_running = is_running
        self._rescan_after = rescan_after
        self._clock = clock
        self._known: KernelProcesses = {}
        self._looked_for: set[tuple[int, str]] = set()
        self._last_scan = float("-inf")

    def _alive(self, kernel: str, owner: int) -> bool:
        return any(
            self._is_running(pid, start)
            for pid, start, _ in _owned(self._known.get(kernel, []), owner)
        )

    def __call__(self, owner: int, wanted: frozenset[str]) -> set[str]:
        alive = {kernel for kernel in wanted if self._alive(kernel, owner)}
        missing = wanted - alive
        asked = {(owner, kernel) for kernel in missing}
        stale = self._clock() - self._last_scan >= self._rescan_after
        if missing and (asked - self._looked_for or stale):
            self._known = kernel_processes()
            self._looked_for |= asked
            self._last_scan = self._clock()
            alive |= {kernel for kernel in missing if self._alive(kernel, owner)}
        return alive
