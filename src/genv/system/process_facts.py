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

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from genv.system.proc_events import ProcessEvents  # (its socket import: daemons only)


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
        name=validate.safe_text(stat.name, 64),  # (the stat line's comm: one read fewer)
        claimed_eid=claimed,
        environ_readable=readable and uid is not None,
        exe=procfs.executable(pid),
    )


class ProcessInspector:
    """``read_facts`` with a cache for the daemon, kept by (pid, start).

    Facts read about a process hold while it runs, except its program (an exec keeps the pid
    and the start) and, for root's processes, its uid (root may give itself away). So with a
    ``watcher`` (pidfds: which processes exited) and process ``events`` (the kernel's word of
    every exec and uid change; genv.system.proc_events), ``begin`` forgets exactly the facts
    that may have stopped holding, and a cycle where nothing happened reads nothing from
    /proc. Without events, ``begin`` looks at every known process's program (and root's
    processes' uid) instead, each cycle: an exemption by program never outlives the program.
    Without a watcher nothing is kept from one ``begin`` to the next.
    """

    def __init__(
        self, watcher: ProcessWatcher | None = None, events: ProcessEvents | None = None
    ) -> None:
        self._cache: dict[int, ProcessFacts] = {}
        self._watcher = watcher
        self._events = events
        self._unwatched: set[int] = set()  # cached, but no pidfd tells of their exit

    def begin(self) -> set[int]:
        """Start a cycle: forget the facts that may no longer hold; their pids."""
        cache = self._cache
        if self._watcher is None:
            stale = set(cache)
            cache.clear()
            return stale
        stale = set()
        for pid, start in self._watcher.take_gone():
            if pid in cache and cache[pid].start == start:
                stale.add(pid)
        for pid in self._unwatched:
            if pid in cache and procfs.start_of(pid) != cache[pid].start:
                stale.add(pid)
        changed = self._events.drain() if self._events is not None else None
        if changed is not None:
            stale.update(pid for pid in changed if pid in cache)
        else:  # no word from the kernel: look at every one
            stale.update(pid for pid, facts in cache.items() if not _still_holds(facts))
        for pid in stale:
            self._drop(pid)
        return stale

    def facts(self, pid: int) -> ProcessFacts | None:
        """The facts of ``pid``: as read before while they hold (see ``begin``), else now."""
        cached = self._cache.get(pid)
        if cached is not None:
            return cached
        facts = read_facts(pid)
        if facts is None or not facts.environ_readable or facts.start is None:
            return facts  # read again next time: it may be readable then
        if self._watcher is not None and not self._watcher.follow(pid, facts.start):
            if procfs.start_of(pid) != facts.start:
                return None  # it exited meanwhile
            self._unwatched.add(pid)
        self._cache[pid] = facts
        return facts

    def recheck(self, pid: int) -> None:
        """Forget the facts kept for ``pid`` unless it is still the process they were read
        from (its start): for a pid seen anew, between two ``begin``."""
        cached = self._cache.get(pid)
        if cached is not None and procfs.start_of(pid) != cached.start:
            self._drop(pid)

    def known(self, pid: int) -> bool:
        """Whether the facts of ``pid`` are kept (``facts`` would read nothing)."""
        return pid in self._cache

    def forget(self, pid: int) -> None:
        """``pid`` is on no GPU any more: keep nothing about it."""
        if pid in self._cache:
            self._drop(pid)

    def retain(self, pids: set[int]) -> None:
        """Forget processes no longer on any GPU, so the cache stays as small as the machine."""
        for pid in [pid for pid in self._cache if pid not in pids]:
            self._drop(pid)

    def _drop(self, pid: int) -> None:
        facts = self._cache.pop(pid)
        self._unwatched.discard(pid)
        if self._watcher is not None and facts.start is not None:
            self._watcher.forget(pid, facts.start)


def _still_holds(facts: ProcessFacts) -> bool:
    """Whether the process still runs the program it ran (and root's is still root's)."""
    return procfs.executable(facts.pid) == facts.exe and (
        facts.uid != 0 or procfs.real_uid(facts.pid) == 0
    )
