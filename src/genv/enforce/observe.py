"""Gathering one cycle's observation: GPUs from the backend, environments from the store, and
the facts of every GPU process; in a daemon, only what changed since the last cycle."""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter

from genv.domain.models import Environment, GpuProcess, GpuSnapshot
from genv.domain.observation import (
    Observation,
    ObservedProcess,
    Usage,
    index_by_eid,
)
from genv.domain.values import replace, value
from genv.store import State, Store
from genv.system import users
from genv.system.process_facts import ProcessInspector
from genv.system.watch import ProcessWatcher

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from genv.backends.base import GpuBackend
    from genv.system.proc_events import ProcessEvents  # (its socket import: daemons only)

_DEVICE = attrgetter("device_index")


@value
class Change:
    """How an observation differs from ``previous``: the same state (environments and
    attachments), and its processes are those of ``previous`` without ``removed``, with
    ``added`` (a process whose usage or facts changed is in both)."""

    previous: Observation
    removed: tuple[ObservedProcess, ...]
    added: tuple[ObservedProcess, ...]


class Observer:
    """Takes the snapshots of a long-running enforcer.

    With a ProcessWatcher (pidfds: which GPU processes exited) and, where the kernel tells,
    ProcessEvents (which ran another program or changed uid), a cycle reads from /proc only
    the processes that are new or changed, and works out again only their entries: the GPU
    backend hands back unchanged readings as the very same objects, so that what differs is
    found by identity. ``change`` tells the caller how the last observation differs from the
    one before (None: start over).
    """

    def __init__(
        self,
        backend: GpuBackend,
        store: Store,
        watcher: ProcessWatcher | None = None,
        events: ProcessEvents | None = None,
    ) -> None:
        """``watcher`` and ``events`` pay off from the second cycle on; a one-shot run goes
        without."""
        self.backend = backend
        self.store = store
        self.watcher = watcher
        self.events = events
        self.inspector = ProcessInspector(watcher, events)
        self.change: Change | None = None
        self._last: tuple[Observation, GpuSnapshot, State] | None = None
        self._same_state: State | None = None  # a state read that equals the last one's
        self._gpu: dict[int, GpuProcess] = {}  # id -> the GpuProcess objects last read
        self._gpu_processes: tuple[GpuProcess, ...] = ()  # and the tuple they came in
        self._usage: dict[int, list[GpuProcess]] = {}  # pid -> its entries, one per device
        self._observed: dict[int, ObservedProcess] = {}
        self._position: dict[int, int] = {}  # pid -> its place in the last observation
        self._volatile: set[int] = set()  # on a GPU, facts not kept: looked at every cycle
        self._environments: tuple[Environment, ...] = ()
        self._by_eid: dict[str, list[Environment]] = {}

    def observe(self) -> tuple[Observation, GpuSnapshot, State]:
        """The snapshot of this cycle, with the GPU reading and the state it was built from.

        When the GPUs and the state read the same as last cycle and no GPU process exited,
        ran another program or changed uid, the snapshot would be built again identical: the
        objects of last cycle are returned instead (the same objects, so that callers can
        tell).
        """
        stale = self.inspector.begin()
        try:
            gpus = self.backend.snapshot(processes=True)
            state = self.store.read()
        except BaseException:
            # begin() has forgotten what may have changed (exits, execs, uid changes); the
            # next cycle starts over rather than take last cycle's observation for current.
            self._last = None
            raise
        last = self._last
        if (
            last is not None
            and state is not last[2]
            and (state is self._same_state or state == last[2])
        ):
            # Equal: keep one object, so that callers can tell. The store hands out its own
            # object again next cycle (it keeps it while nothing changes): known equal, it
            # is not compared field by field again.
            self._same_state = state
            state = last[2]
        if last is None or state is not last[2]:
            self.change = None
            self._same_state = None
            self._last = (self._rebuild(gpus, state), gpus, state)
            return self._last
        if gpus is last[1] and not stale and not self._volatile:
            self.change = Change(last[0], (), ())
            return last
        observation, change = self._update(gpus, state, stale, last[0])
        self.change = change
        self._last = (observation, gpus, state)
        return self._last

    # -- from scratch ----------------------------------------------------------------------

    def _rebuild(self, gpus: GpuSnapshot, state: State) -> Observation:
        self._environments = owned_by_name(state.environments)
        self._by_eid = index_by_eid(self._environments)
        self._gpu = dict(zip(map(id, gpus.processes), gpus.processes, strict=True))
        self._gpu_processes = gpus.processes
        usage: dict[int, list[GpuProcess]] = {}
        for process in gpus.processes:
            usage.setdefault(process.pid, []).append(process)
        self.inspector.retain(set(usage))
        self._usage = usage
        self._observed = {}
        self._volatile = set()
        for pid in sorted(usage):
            found = self._observe(pid, state, None)
            if found is not None:
                self._observed[pid] = found
        return self._snapshot(gpus, state, None)

    # -- what changed ----------------------------------------------------------------------

    def _update(
        self, gpus: GpuSnapshot, state: State, stale: set[int], previous: Observation
    ) -> tuple[Observation, Change]:
        affected = stale | self._volatile
        if gpus.processes is not self._gpu_processes:
            current = dict(zip(map(id, gpus.processes), gpus.processes, strict=True))
            before = self._gpu
            for key in before.keys() - current.keys():
                gone = before[key]
                entries = self._usage.get(gone.pid)
                if entries is not None:
                    _remove(entries, gone)
                    if not entries:
                        del self._usage[gone.pid]
                affected.add(gone.pid)
            for key in current.keys() - before.keys():
                new = current[key]
                self._usage.setdefault(new.pid, []).append(new)
                affected.add(new.pid)
                # A new GPU entry may be a new process under an old pid (one that exited
                # after begin() looked): facts kept for the pid count only for its start.
                self.inspector.recheck(new.pid)
            self._gpu = current
            self._gpu_processes = gpus.processes
        removed: list[ObservedProcess] = []
        added: list[ObservedProcess] = []
        reordered = False
        for pid in affected:
            old = self._observed.get(pid)
            if pid in self._usage:
                found = self._observe(pid, state, old)
            else:  # on no GPU any more
                found = None
                self.inspector.forget(pid)
                self._volatile.discard(pid)
            if found is old:
                continue
            if old is not None:
                removed.append(old)
                del self._observed[pid]
            if found is not None:
                added.append(found)
                self._observed[pid] = found
            reordered = reordered or old is None or found is None
        if not removed and not added and gpus.devices == previous.devices:
            return previous, Change(previous, (), ())
        if reordered:
            observation = self._snapshot(gpus, state, None)
        else:
            processes = list(previous.processes)
            for process in added:
                processes[self._position[process.pid]] = process
            observation = self._snapshot(gpus, state, tuple(processes))
        return observation, Change(previous, tuple(removed), tuple(added))

    def _observe(
        self, pid: int, state: State, old: ObservedProcess | None
    ) -> ObservedProcess | None:
        """The entry of ``pid`` (on a GPU now), or None when it is gone; ``old`` when it would
        be built again the same."""
        inspector = self.inspector
        facts = inspector.facts(pid)
        if facts is None or not inspector.known(pid):
            self._volatile.add(pid)  # read again next cycle
            if facts is None:
                return None
        else:
            self._volatile.discard(pid)
        usage = tuple(
            Usage(p.device_index, p.used_memory) for p in sorted(self._usage[pid], key=_DEVICE)
        )
        if old is not None and old.facts is facts and old.usage == usage:
            return old
        membership, env, note = state.membership(facts, self._by_eid)
        return ObservedProcess(facts, usage, membership, env, note)

    def _snapshot(
        self, gpus: GpuSnapshot, state: State, processes: tuple[ObservedProcess, ...] | None
    ) -> Observation:
        if processes is None:
            pids = sorted(self._observed)
            processes = tuple(map(self._observed.__getitem__, pids))
            self._position = dict(zip(pids, range(len(pids)), strict=True))
        return Observation(
            devices=gpus.devices,
            processes=processes,
            environments=self._environments,
            attachments=state.attachments,
            unusable_uids=state.unusable_uids,
        )


def _remove(entries: list[GpuProcess], gone: GpuProcess) -> None:
    for index, entry in enumerate(entries):
        if entry is gone:
            del entries[index]
            return


def owned_by_name(environments: Iterable[Environment]) -> tuple[Environment, ...]:
    """The environments with their owner's name as the system knows it.

    The name in a record is whatever its owner wrote (``genv envs activate --username``); the
    rules look users up by name (limits, exemptions, messages), so they must get the name of
    the uid that owns the record, or anyone could pose as an exempt user.
    """
    return tuple(
        env if env.username == (name := users.username(env.uid)) else replace(env, username=name)
        for env in environments
    )
