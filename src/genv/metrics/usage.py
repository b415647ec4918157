"""Who uses what on one host: devices, environments, GPU processes and users, with the memory
each holds against what it was given. A pure function of what was read, so the exporter,
``genv top`` and (later) a cluster source build the very same view from a host's readings.

Memory "capacity" of an environment on a device is what it may use there: the capacity it
reserved when the device was attached (else its configured ``gpu_memory``), or, when it has
none, the whole device. A device's "reserved" memory is the sum of the capacities of the
environments attached to it, at most its total.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from genv.domain.memory import MemoryFormatError, parse_memory
from genv.domain.models import DeviceTelemetry, GpuSnapshot
from genv.domain.observation import Membership, ProcessFacts, index_by_eid
from genv.domain.state import State, StateProblem

# The kinds of state-file problems (genv_state_problems{kind}).
INVALID = "invalid"  # its content, permissions or name: its owner can fix it
UNREADABLE = "unreadable"  # this reader may not read it (others may)
IO_ERROR = "io-error"  # reading failed: its owner's records are unknown
FOREIGN = "foreign"  # a file that concerns no user (planted under another's name)
PROBLEM_KINDS = (INVALID, UNREADABLE, IO_ERROR, FOREIGN)


@dataclass(frozen=True)
class DeviceUsage:
    index: int
    uuid: str
    name: str
    total_memory: int
    used_memory: int | None  # as the hardware reports it; None when it does not say
    reserved_memory: int  # capacities of the environments attached, at most the total
    environments: int  # attached to it
    temperature: int | None = None
    utilization: int | None = None

    @property
    def free_memory(self) -> int:
        return max(self.total_memory - max(self.used_memory or 0, self.reserved_memory), 0)


@dataclass(frozen=True)
class ProcessUsage:
    """A GPU process: its owner and the environment it belongs to (genv.domain.observation)."""

    pid: int
    uid: int | None
    username: str | None  # of its real uid, as the system knows it
    name: str  # what it calls itself (escaped; for people to read only)
    membership: Membership
    env: tuple[int, str] | None  # (owner uid, eid) when it belongs to an environment
    memory: tuple[tuple[int, int | None], ...]  # (device, bytes or None) per device used

    @property
    def eid(self) -> str | None:
        return self.env[1] if self.env is not None else None

    @property
    def devices(self) -> tuple[int, ...]:
        return tuple(sorted({index for index, _ in self.memory}))

    @property
    def total_memory(self) -> int:
        return sum(used or 0 for _, used in self.memory)


@dataclass(frozen=True)
class EnvironmentUsage:
    eid: str
    uid: int
    username: str
    name: str | None
    creation: float
    devices: tuple[int, ...]  # attached
    capacity: tuple[tuple[int, int], ...]  # (device, bytes it may use there), attached ones
    used: tuple[tuple[int, int], ...]  # (device, bytes its processes hold there)
    processes: tuple[int, ...]  # pids of its GPU processes
    capacity_text: str | None = None  # as configured (``4g``), for people to read

    @property
    def key(self) -> tuple[int, str]:
        return (self.uid, self.eid)

    @property
    def used_memory(self) -> int:
        return sum(used for _, used in self.used)

    @property
    def capacity_memory(self) -> int:
        return sum(capacity for _, capacity in self.capacity)


@dataclass(frozen=True)
class UserUsage:
    """A user with environments, GPU processes or an unusable state file.

    ``memory_used`` and ``devices_in_use`` count every GPU process running as the user
    (in an environment or not, as the per-user memory rule does); ``environment_processes``
    and ``attached_devices`` only what belongs to their environments (genv 1.4.3's meaning).
    """

    uid: int
    username: str
    environments: int
    attached_devices: int
    environment_processes: int
    processes: int
    devices_in_use: int
    memory_used: int
    memory_capacity: int
    state_problem: str | None = None  # the kind, when their state file is unusable


@dataclass(frozen=True)
class HostUsage:
    time: float
    devices: tuple[DeviceUsage, ...]
    environments: tuple[EnvironmentUsage, ...]
    processes: tuple[ProcessUsage, ...]
    users: tuple[UserUsage, ...]
    problems: tuple[tuple[str, str], ...] = ()  # (kind, line) per unusable state file
    gpu_errors: tuple[str, ...] = ()
    partial: bool = False  # some GPU could not be read: the view lacks what it holds

    def user(self, username: str) -> UserUsage | None:
        return next((user for user in self.users if user.username == username), None)


def problem_kind(problem: StateProblem) -> str:
    if problem.uid is None:
        return FOREIGN
    if problem.hidden:
        return UNREADABLE
    if not problem.owner_fault:
        return IO_ERROR
    return INVALID


def user_label(uid: int | None, username: str | None) -> str:
    """The name a user is shown under: the system's, else ``uid N``."""
    if username:
        return username
    return f"uid {uid}" if uid is not None else "unknown"


def build_usage(
    gpus: GpuSnapshot,
    telemetry: Sequence[DeviceTelemetry],
    state: State,
    facts: Mapping[int, ProcessFacts | None],
    username: Callable[[int], str | None],
    now: float,
) -> HostUsage:
    """The usage view of one host.

    ``facts`` holds what /proc says of each GPU process (None: it exited since the GPUs were
    read, and is left out); ``username`` names a uid as the system does (never as a record
    says: records are written by their owners).
    """
    devices_by_index = {device.index: device for device in gpus.devices}
    environments = sorted(state.environments, key=lambda env: (env.creation, env.uid, env.eid))
    by_eid = index_by_eid(environments)

    # -- processes and their environments
    usage_of: dict[int, list[tuple[int, int | None]]] = defaultdict(list)
    for gpu_process in gpus.processes:
        usage_of[gpu_process.pid].append((gpu_process.device_index, gpu_process.used_memory))
    processes: list[ProcessUsage] = []
    for pid in sorted(usage_of):
        seen = facts.get(pid)
        if seen is None:
            continue
        membership, env, _ = state.membership(seen, by_eid)
        processes.append(
            ProcessUsage(
                pid=pid,
                uid=seen.uid,
                username=seen.username,
                name=seen.name,
                membership=membership,
                env=env.key if env is not None else None,
                memory=tuple(sorted(usage_of[pid], key=lambda item: item[0])),
            )
        )
    members: dict[tuple[int, str], list[ProcessUsage]] = defaultdict(list)
    for process in processes:
        if process.env is not None:
            members[process.env].append(process)

    # -- environments: what they were given and what they hold
    parsed: dict[str, int | None] = {}
    env_views: list[EnvironmentUsage] = []
    reserved: dict[int, int] = defaultdict(int)
    attached_to: dict[int, int] = defaultdict(int)
    for env in environments:
        attachments = state.attachments_of(env)
        capacity: list[tuple[int, int]] = []
        for attachment in sorted(attachments, key=lambda a: a.device_index):
            device = devices_by_index.get(attachment.device_index)
            if device is None:
                continue  # attached to a device that is not there now
            text = attachment.gpu_memory or env.config.gpu_memory
            amount = _capacity(text, parsed)
            given = device.total_memory if amount is None else min(amount, device.total_memory)
            capacity.append((device.index, given))
            reserved[device.index] += given
            attached_to[device.index] += 1
        held: dict[int, int] = defaultdict(int)
        for process in members.get(env.key, ()):
            for index, used in process.memory:
                held[index] += used or 0
        env_views.append(
            EnvironmentUsage(
                eid=env.eid,
                uid=env.uid,
                username=user_label(env.uid, username(env.uid)),
                name=env.config.name,
                creation=env.creation,
                devices=tuple(sorted({a.device_index for a in attachments})),
                capacity=tuple(capacity),
                used=tuple(sorted(held.items())),
                processes=tuple(p.pid for p in members.get(env.key, ())),
                capacity_text=env.config.gpu_memory,
            )
        )

    # -- devices
    temperature = {item.index: item for item in telemetry}
    device_views = tuple(
        DeviceUsage(
            index=device.index,
            uuid=device.uuid,
            name=device.name,
            total_memory=device.total_memory,
            used_memory=device.used_memory,
            reserved_memory=min(reserved[device.index], device.total_memory),
            environments=attached_to[device.index],
            temperature=temperature[device.index].temperature
            if device.index in temperature
            else None,
            utilization=temperature[device.index].utilization
            if device.index in temperature
            else None,
        )
        for device in sorted(gpus.devices, key=lambda d: d.index)
    )

    # -- users
    problems = {p.uid: problem_kind(p) for p in state.problems if p.uid is not None}
    uids = {env.uid for env in environments} | {p.uid for p in processes if p.uid is not None}
    uids |= set(problems)  # a user whose file is broken may hold more than we can see
    users = []
    for uid in sorted(uids):
        own_envs = [view for view in env_views if view.uid == uid]
        own_processes = [p for p in processes if p.uid == uid]
        users.append(
            UserUsage(
                uid=uid,
                username=user_label(uid, username(uid)),
                environments=len(own_envs),
                attached_devices=len({i for view in own_envs for i in view.devices}),
                environment_processes=sum(len(view.processes) for view in own_envs),
                processes=len(own_processes),
                devices_in_use=len({i for p in own_processes for i in p.devices}),
                memory_used=sum(p.total_memory for p in own_processes),
                memory_capacity=sum(view.capacity_memory for view in own_envs),
                state_problem=problems.get(uid),
            )
        )
    return HostUsage(
        time=now,
        devices=device_views,
        environments=tuple(env_views),
        processes=tuple(processes),
        users=tuple(users),
        problems=tuple((problem_kind(p), p.line()) for p in state.problems),
        gpu_errors=gpus.errors,
        partial=gpus.partial,
    )


def _capacity(text: str | None, parsed: dict[str, int | None]) -> int | None:
    """Bytes of a capacity text (None: none set, or one no one can understand; records are
    written by their owners)."""
    if not text:
        return None
    if text not in parsed:
        try:
            parsed[text] = parse_memory(text)
        except MemoryFormatError:
            parsed[text] = None
    return parsed[text]
