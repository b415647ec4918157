"""The environment's part of the machine: its attached devices and its own processes.

A process is the environment's by the same rule the enforcer applies
(genv.domain.observation.resolve): it claims the environment and runs as its owner (or root).
A process whose claim cannot be read (another user's, without root) is not shown.
"""

from __future__ import annotations

from dataclasses import dataclass

from genv.core import environments
from genv.domain.memory import parse_memory
from genv.domain.models import Device
from genv.domain.observation import Membership, index_by_eid
from genv.store import Store
from genv.system.process_facts import read_facts


@dataclass(frozen=True)
class ViewProcess:
    pid: int
    device_index: int
    used_memory: int | None
    name: str


@dataclass(frozen=True)
class View:
    eid: str
    name: str | None
    devices: tuple[Device, ...]
    totals: dict[int, int]  # device index -> total memory shown (the capacity when set)
    processes: tuple[ViewProcess, ...]

    def only(self, wanted: set[str]) -> View:
        """The view restricted to the devices named by index or UUID (``-i``)."""
        devices = tuple(d for d in self.devices if str(d.index) in wanted or d.uuid in wanted)
        kept = {d.index for d in devices}
        return View(
            self.eid,
            self.name,
            devices,
            self.totals,
            tuple(p for p in self.processes if p.device_index in kept),
        )


def environment_view(eid: str) -> View:
    from genv.backends import open_backend

    store = Store()
    state = store.read()
    env = environments.lookup(state, eid, store.caller_uid)
    snapshot = open_backend().snapshot()
    attached = set(state.attached_indices(env))
    devices = tuple(d for d in snapshot.devices if d.index in attached)
    capacity = parse_memory(env.config.gpu_memory) if env.config.gpu_memory else None
    totals = {
        d.index: d.total_memory if capacity is None else min(capacity, d.total_memory)
        for d in devices
    }
    by_eid = index_by_eid(state.environments)
    mine = []
    verdicts: dict[int, bool] = {}
    for process in snapshot.processes:
        if process.device_index not in attached:
            continue
        if process.pid not in verdicts:
            facts = read_facts(process.pid)
            membership, owner, _ = (
                state.membership(facts, by_eid)
                if facts is not None
                else (Membership.UNKNOWN, None, "")
            )
            verdicts[process.pid] = membership is Membership.IN_ENV and owner == env
        if verdicts[process.pid]:
            mine.append(
                ViewProcess(
                    process.pid, process.device_index, process.used_memory, _program(process.pid)
                )
            )
    return View(eid, env.config.name, devices, totals, tuple(mine))


def _program(pid: int) -> str:
    """What the process table shows as its name: the program it was started as."""
    from genv.domain.validate import safe_text

    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            first = file.read(4096).split(b"\0", 1)[0]
        if first:
            return safe_text(first.decode(errors="replace"))
        with open(f"/proc/{pid}/comm", "rb") as file:
            return safe_text(file.read(64).strip().decode(errors="replace"))
    except OSError:
        return "[Not Found]"
