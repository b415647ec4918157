"""Facts about GPU processes (owner, program, claimed environment), read from /proc.

A process is (pid, start): facts are cached under both, so a reused pid is read afresh and a
known process costs nothing when a watcher vouches that it still runs. What a process says
about itself (its name, its claim) is kept apart from what the kernel says (owner, program),
and only the latter is ever matched against rules.
"""

from __future__ import annotations

from genv.domain import validate
from genv.domain.observation import ProcessFacts
from genv.system import procfs, users
from genv.system.processes import environment_claim
from genv.system.watch import ProcessWatcher


def read_facts(pid: int) -> ProcessFacts | None:
    """Facts about ``pid`` now, or None when it is gone; what cannot be read is marked."""
    stat = procfs.read_stat(pid)
    if stat is None or stat.dead:
        return None
    uid = procfs.real_uid(pid)
    claim = environment_claim(pid)
    if claim is None:
        return None
    claimed, readable = claim
    if claimed is not None:
        try:
            claimed = validate.environment_id(claimed)
        except validate.InvalidValue:
            claimed = None  # no environment has such an id: it claims none
    if procfs.start_of(pid) != stat.start:
        return None  # it exited (and maybe its pid was reused) while we read
    return ProcessFacts(
        pid=pid,
        start=stat.start,
        uid=uid,
        username=users.username(uid) if uid is not None else None,
        name=_comm(pid),
        claimed_eid=claimed,
        environ_readable=readable and uid is not None,
        exe=procfs.executable(pid),
    )


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as file:
            return validate.safe_text(file.read(64).rstrip(b"\n").decode(errors="replace"), 64)
    except OSError:
        return "?"


class ProcessInspector:
    """``read_facts`` with a cache for the daemon, checked by (pid, start)."""

    def __init__(self, watcher: ProcessWatcher | None = None) -> None:
        self._cache: dict[int, ProcessFacts] = {}
        self._watcher = watcher

    def still_known(self, pid: int) -> bool:
        """Whether the facts read about ``pid`` still hold: the very same process runs.

        Answered from the watcher, without reading /proc; False when it cannot tell.
        """
        cached = self._cache.get(pid)
        return (
            cached is not None
            and self._watcher is not None
            and self._watcher.is_running(pid, cached.start)
        )

    def facts(self, pid: int) -> ProcessFacts | None:
        """The facts of ``pid``. A known process is read again only when it ran another
        program since (exec keeps the pid and the start, but changes ``/proc/PID/exe``):
        an exemption by program must never outlive the program."""
        cached = self._cache.get(pid)
        if (
            cached is not None
            and (
                self.still_known(pid)
                or (cached.start is not None and procfs.start_of(pid) == cached.start)
            )
            and procfs.executable(pid) == cached.exe
            and (cached.uid != 0 or procfs.real_uid(pid) == 0)  # root may give itself away
        ):
            return cached
        facts = read_facts(pid)
        if facts is None or not facts.environ_readable:
            self._cache.pop(pid, None)  # read again next time: it may be readable then
            return facts
        self._cache[pid] = facts
        return facts

    def retain(self, pids: set[int]) -> None:
        """Forget processes no longer on any GPU, so the cache stays as small as the machine."""
        for pid in [pid for pid in self._cache if pid not in pids]:
            del self._cache[pid]
