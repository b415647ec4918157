"""Which Jupyter kernels run, and as whom.

A kernel is found by its connection file, ``kernel-<id>.json``, which Jupyter passes on the
kernel's command line. A command line is a claim anyone can make (``sleep 1 kernel-X.json``),
so a kernel counts for an environment only when its process runs as the environment's owner
(or root): no one keeps another user's environment alive by posing as its kernel.

A kernel being restarted has no process for a moment, while Jupyter keeps its id and its
connection file (and the kernel provisioner asks for its devices in exactly that moment), so a
kernel also counts while its connection file exists in its owner's Jupyter runtime folder,
owned by that owner. Other users usually may not look into that folder (Jupyter makes it
0700): for them only the process counts.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
import time
from collections import defaultdict
from collections.abc import Callable, Collection

from genv.system import procfs

_KERNEL_FILE = re.compile(rb"kernel-([0-9A-Za-z_\-]{1,128})\.json")

# kernel id -> the (pid, start, real uid) of each process that names it
KernelProcesses = dict[str, list[tuple[int, int, int]]]


def kernel_processes(wanted: Collection[str]) -> KernelProcesses:
    """Every process whose command line names the connection file of one of the ``wanted``
    kernels: one pass over /proc. Only ids asked for are kept (a command line is anyone's to
    fill with made-up ids)."""
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
        ids.intersection_update(wanted)
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


def runtime_dirs(owner: int) -> list[str]:
    """Where Jupyter keeps the connection files of ``owner``: its data folder's ``runtime``
    (``~/.local/share/jupyter/runtime``), or the per-user runtime folder that Jupyter uses
    with platform folders (``/run/user/UID/jupyter/runtime``)."""
    folders = []
    try:
        home = pwd.getpwuid(owner).pw_dir
    except (KeyError, OverflowError):
        home = ""
    if home and home != "/":
        folders.append(os.path.join(home, ".local", "share", "jupyter", "runtime"))
    folders += [f"/run/user/{owner}/jupyter/runtime", f"/run/user/{owner}/jupyter"]
    return folders


def connection_file_kept(kernel: str, owner: int, folders: list[str] | None = None) -> bool:
    """Whether the connection file of ``kernel`` is in a runtime folder of ``owner``, a
    regular file owned by ``owner`` (no link is followed at the end). A folder this reader
    may not look into says nothing."""
    name = f"kernel-{kernel}.json"
    for folder in runtime_dirs(owner) if folders is None else folders:
        try:
            info = os.stat(os.path.join(folder, name), follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode) and info.st_uid == owner:
            return True
    return False


def _owned(processes: list[tuple[int, int, int]], owner: int) -> list[tuple[int, int, int]]:
    return [p for p in processes if p[2] in (owner, 0)]


def running_kernels(owner: int, wanted: frozenset[str]) -> set[str]:
    """Which of ``wanted`` run as ``owner`` (or root): one scan, fine for a one-off command."""
    if owner != os.getuid() and procfs.hides_others():
        return set(wanted)  # another user's, under hidepid: cannot tell, so not "ended"
    found = kernel_processes(wanted)
    running = {kernel for kernel in wanted if _owned(found.get(kernel, []), owner)}
    return running | {k for k in wanted - running if connection_file_kept(k, owner)}


# The most often one owner's new kernel ids make the daemon scan every command line.
OWNER_SCAN_INTERVAL = 5.0


class KernelTracker:
    """Which kernels run, for a reader that asks every second (the daemon).

    Scanning every command line is the expensive part, so kernels found once are then
    followed by (pid, start), and a new scan happens only when an id is asked for that the
    last scan did not look for, or every ``rescan_after`` seconds while some asked-for id is
    missing (a kernel being restarted keeps its id).

    Ids are a user's to write, so one user's new ids make a scan at most once every
    ``owner_interval`` seconds: a user naming a new id every second would otherwise cost root
    a scan of /proc every second. Until it is scanned for, a new id counts as running, as a
    kernel that has just started does: that keeps only its owner's own environment alive
    (until the next scan, or as long as the daemon's store keeps that live state: at most
    30 s while nothing else changes), which any process of theirs registered with it does
    as well.
    """

    def __init__(
        self,
        is_running: Callable[[int, int | None], bool],
        rescan_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        owner_interval: float = OWNER_SCAN_INTERVAL,
    ) -> None:
        self._is_running = is_running
        self._rescan_after = rescan_after
        self._owner_interval = owner_interval
        self._clock = clock
        self._known: KernelProcesses = {}
        self._looked_for: dict[int, frozenset[str]] = {}  # owner -> what the last scan sought
        self._last_scan = float("-inf")
        self._owner_scans: dict[int, float] = {}  # owner -> when their new ids made a scan
        self._folders: dict[int, list[str]] = {}  # owner -> their runtime folders

    def _alive(self, kernel: str, owner: int) -> bool:
        return any(
            self._is_running(pid, start)
            for pid, start, _ in _owned(self._known.get(kernel, []), owner)
        )

    def __call__(self, owner: int, wanted: frozenset[str]) -> set[str]:
        alive = {kernel for kernel in wanted if self._alive(kernel, owner)}
        missing = wanted - alive
        now = self._clock()
        stale = now - self._last_scan >= self._rescan_after
        new = missing - self._looked_for.get(owner, frozenset())
        # One owner's new ids make a scan at most every owner_interval seconds (see above).
        allowed = now - self._owner_scans.get(owner, float("-inf")) >= self._owner_interval
        if missing and (stale or (new and allowed)):
            self._looked_for[owner] = frozenset(missing)  # only what is wanted now: bounded
            self._known = kernel_processes(
                set(self._known).union(*self._looked_for.values())  # every owner's, still
            )
            self._last_scan = now
            if new:
                if len(self._owner_scans) > 4096:  # (owners who scanned long ago: as absent)
                    limit = now - self._owner_interval
                    self._owner_scans = {o: t for o, t in self._owner_scans.items() if t > limit}
                self._owner_scans[owner] = now
            alive |= {kernel for kernel in missing if self._alive(kernel, owner)}
            new = frozenset()
        alive |= new  # not looked for yet: running, as a kernel that has just started
        missing = wanted - alive
        if not missing:
            return alive
        folders = self._folders.get(owner)
        if folders is None:
            if len(self._folders) > 4096:
                self._folders.clear()
            folders = self._folders[owner] = runtime_dirs(owner)
        return alive | {k for k in missing if connection_file_kept(k, owner, folders)}
