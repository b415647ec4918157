"""The simulated machine of one measurement: E environments, P GPU processes, 8 GPUs.

One description feeds both stand-ins (``nvidia-smi`` and ``libnvidia-ml.so.1``); the state of
both tools is written from the same layout, so they enforce the very same machine:

- environment ``e<k>`` belongs to user ``k mod U``, is kept alive by its own ``sleep``, is
  attached to device ``k mod 8`` and has a GPU memory capacity with room to spare;
- GPU process ``j`` is a ``sleep`` of environment ``e<j mod E>``'s user, claims that
  environment (``GENV_ENVIRONMENT_ID``) and holds ``100mi`` on its environment's device.

So no rule is broken, and every rule has the whole machine to look at.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from genv.backends.machine_file import write_machine as genv_write_machine
from genv.system import procfs
from genvbench.host import ProcessPool, Sleeper, User

DEVICES = 8
DEVICE_MEMORY = "80gi"
DEVICE_MEMORY_MI = 80 * 1024
PROCESS_MEMORY_MI = 100


@dataclass(frozen=True)
class Env:
    eid: str
    user: User
    device: int
    capacity: str
    keeper: Sleeper


@dataclass(frozen=True)
class GpuProcess:
    sleeper: Sleeper
    device: int
    memory_mi: int = PROCESS_MEMORY_MI


@dataclass(frozen=True)
class Layout:
    envs: tuple[Env, ...]
    processes: tuple[GpuProcess, ...]

    @property
    def size(self) -> int:
        return len(self.envs) + len(self.processes)


def eid_of(index: int) -> str:
    return f"e{index}"


def capacity_for(envs: int, processes: int) -> str:
    """Twice what the busiest environment holds on its device, at least 1gi."""
    busiest = math.ceil(processes / envs) * PROCESS_MEMORY_MI
    return f"{max(1024, 2 * busiest)}mi"


class Population:
    """The processes of the machine, started once and reused by every layout that fits.

    Keepers are shared by all layouts (environment ``e<k>`` always has the same one); GPU
    processes claim ``e<j mod E>``, so one set serves every layout with the same E.
    """

    def __init__(self, pool: ProcessPool, users: list[User]) -> None:
        self.pool = pool
        self.users = users
        self._keepers: list[Sleeper] = []
        self._gpu_envs = 0
        self._gpu: list[Sleeper] = []

    def keepers(self, count: int) -> list[Sleeper]:
        while len(self._keepers) < count:
            index = len(self._keepers)
            self._keepers.append(self.pool.start(self._user(index), eid_of(index)))
        return self._keepers[:count]

    def gpu_processes(self, envs: int, count: int) -> list[Sleeper]:
        if envs != self._gpu_envs:
            self.pool.stop(self._gpu)
            self._gpu, self._gpu_envs = [], envs
        while len(self._gpu) < count:
            env = len(self._gpu) % envs
            self._gpu.append(self.pool.start(self._user(env), eid_of(env)))
        return self._gpu[:count]

    def spare(self, env: Env) -> Sleeper:
        """A new process of ``env``'s user claiming ``env`` (the rule breaker)."""
        return self.pool.start(env.user, env.eid)

    def layout(self, envs: int, processes: int) -> Layout:
        capacity = capacity_for(envs, processes)
        env_list = tuple(
            Env(eid_of(k), self._user(k), k % DEVICES, capacity, keeper)
            for k, keeper in enumerate(self.keepers(envs))
        )
        gpu = tuple(
            GpuProcess(sleeper, env_list[j % envs].device)
            for j, sleeper in enumerate(self.gpu_processes(envs, processes))
        )
        return Layout(env_list, gpu)

    def _user(self, env_index: int) -> User:
        return self.users[env_index % len(self.users)]


# -- the machine description (both stand-ins) ----------------------------------------------


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


_STARTS: weakref.WeakKeyDictionary[subprocess.Popen[bytes], int | None] = (
    weakref.WeakKeyDictionary()
)


def _start(sleeper: Sleeper) -> int | None:
    """The sleeper's start (ticks since boot), read once: the description is rewritten twice
    a second with thousands of processes, and reading /proc for each would load the host."""
    if sleeper.process not in _STARTS:
        _STARTS[sleeper.process] = procfs.start_of(sleeper.pid)
    return _STARTS[sleeper.process]


def write_machine(
    path: Path, layout: Layout, extra: tuple[GpuProcess, ...] = (), nudge: int = 0
) -> None:
    """The description, through genv's one writer (which records each process's start and
    writes the flat form the stand-ins read); ``nudge`` MiB more on the first process (a
    change, no violation)."""
    processes = [
        {"pid": p.sleeper.pid, "device": p.device, "used_memory": f"{p.memory_mi}mi",
         "start": _start(p.sleeper)}
        for p in (*layout.processes, *extra)
    ]
    if processes and nudge:
        processes[0]["used_memory"] = f"{layout.processes[0].memory_mi + nudge}mi"
    genv_write_machine(path, [{"total_memory": DEVICE_MEMORY}] * DEVICES, processes)


# -- the project's state: through its own store, as root for each user ---------------------

PROJECT_STATE = Path(__file__).with_name("project_state.py")


def write_project_state(state_dir: Path, layout: Layout, python: str) -> None:
    """Environments and attachments through ``genv.store``, run by the project's interpreter
    (``python``); the files end up owned by each user."""
    _clear(state_dir)
    envs = [
        {"eid": env.eid, "uid": env.user.uid, "username": env.user.name,
         "pid": env.keeper.pid, "device": env.device, "capacity": env.capacity}
        for env in layout.envs
    ]
    subprocess.run([python, str(PROJECT_STATE), str(state_dir)], input=json.dumps(envs),
                   text=True, check=True, capture_output=True)


# -- genv 1.4.3's state: the two JSON files it writes ---------------------------------------

PEER_TIME_FORMAT = "%d/%m/%Y %H:%M:%S"  # how genv 1.4.3 writes times


def peer_documents(layout: Layout) -> tuple[dict, dict]:
    """``envs.json`` and ``devices.json`` as genv 1.4.3 writes them for this layout."""
    now = time.strftime(PEER_TIME_FORMAT)
    envs = {
        "envs": [
            {
                "eid": env.eid,
                "uid": env.user.uid,
                "creation": now,
                "username": env.user.name,
                "config": {"name": None, "gpu_memory": env.capacity, "gpus": None},
                "pids": [env.keeper.pid],
                "kernel_ids": [],
            }
            for env in layout.envs
        ]
    }
    devices = {
        "devices": [
            {
                "index": index,
                "total_memory": f"{DEVICE_MEMORY_MI}mi",
                "attachments": [
                    {"eid": env.eid, "gpu_memory": env.capacity, "time": now}
                    for env in layout.envs
                    if env.device == index
                ],
            }
            for index in range(DEVICES)
        ]
    }
    return envs, devices


def write_peer_state(state_dir: Path, layout: Layout) -> None:
    _clear(state_dir)
    state_dir.mkdir(mode=0o777, exist_ok=True)
    os.chmod(state_dir, 0o777)
    envs, devices = peer_documents(layout)
    # genv 1.4.3 writes with indent=2 and mode 0666, so that every user can change them
    write_atomic(state_dir / "envs.json", json.dumps(envs, indent=2), 0o666)
    write_atomic(state_dir / "devices.json", json.dumps(devices, indent=2), 0o666)


def _clear(state_dir: Path) -> None:
    if state_dir.is_dir():
        for entry in state_dir.iterdir():
            if entry.is_file() or entry.is_symlink():
                entry.unlink()
