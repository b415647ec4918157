"""A host's usage view (genv.metrics.usage.HostUsage) as a line of ``genv usage serve --usage``.

The host builds the view itself, with the very code of ``genv monitor`` (LocalSource), and
sends it whole; the controller of ``genv remote monitor`` and ``genv remote top`` decodes it
(with limits and type checks, as every answer of a host: genv.remote.wire) and renders it, so
nothing is worked out twice and both sides show the same numbers.
"""

from __future__ import annotations

from typing import Any

from genv.domain import constants
from genv.metrics.usage import (
    PROBLEM_KINDS,
    DeviceUsage,
    EnvironmentUsage,
    HostUsage,
    ProcessUsage,
    UserUsage,
)
from genv.remote.wire import (
    UID_MAX,
    WireError,
    environment_key,
    items,
    membership_of,
    number,
    optional_text,
    optional_whole,
    text,
    whole,
)

NAME = 256  # user, device, environment names
INDEX = 1 << 20  # device indices
COUNT = 1 << 31


def encode_usage(usage: HostUsage) -> dict[str, Any]:
    return {
        "time": usage.time,
        "devices": [
            [
                d.index,
                d.uuid,
                d.name,
                d.total_memory,
                d.used_memory,
                d.reserved_memory,
                d.environments,
                d.temperature,
                d.utilization,
            ]
            for d in usage.devices
        ],
        "environments": [
            [
                e.eid,
                e.uid,
                e.username,
                e.name,
                e.creation,
                list(e.devices),
                [list(pair) for pair in e.capacity],
                [list(pair) for pair in e.used],
                list(e.processes),
                e.capacity_text,
            ]
            for e in usage.environments
        ],
        "processes": [
            [
                p.pid,
                p.uid,
                p.username,
                p.name,
                p.membership.value,
                list(p.env) if p.env is not None else None,
                [list(pair) for pair in p.memory],
            ]
            for p in usage.processes
        ],
        "users": [
            [
                u.uid,
                u.username,
                u.environments,
                u.attached_devices,
                u.environment_processes,
                u.processes,
                u.devices_in_use,
                u.memory_used,
                u.memory_capacity,
                u.state_problem,
            ]
            for u in usage.users
        ],
        "problems": [list(pair) for pair in usage.problems],
        "gpu_errors": list(usage.gpu_errors),
        "partial": usage.partial,
    }


def _pairs(value: Any, second_optional: bool = False) -> tuple[tuple[int, Any], ...]:
    found = []
    for entry in items(value):
        index, amount = items(entry, 2)
        found.append(
            (whole(index, 0, INDEX), optional_whole(amount) if second_optional else whole(amount))
        )
    return tuple(found)


def _indices(value: Any, high: int = INDEX) -> tuple[int, ...]:
    return tuple(whole(index, 0, high) for index in items(value))


def _device(item: Any) -> DeviceUsage:
    index, uuid, name, total, used, reserved, envs, temperature, utilization = items(item, 9)
    return DeviceUsage(
        index=whole(index, 0, INDEX),
        uuid=text(uuid, NAME),
        name=text(name, NAME),
        total_memory=whole(total),
        used_memory=optional_whole(used),
        reserved_memory=whole(reserved),
        environments=whole(envs, 0, COUNT),
        temperature=optional_whole(temperature, -(1 << 16), 1 << 16),
        utilization=optional_whole(utilization, 0, 1000),
    )


def _environment(item: Any) -> EnvironmentUsage:
    eid, uid, user, name, creation, devices, capacity, used, pids, capacity_text = items(item, 10)
    return EnvironmentUsage(
        eid=text(eid, constants.MAX_ID_LENGTH),
        uid=whole(uid, 0, UID_MAX),
        username=text(user, NAME),
        name=optional_text(name, NAME),
        creation=number(creation),
        devices=_indices(devices),
        capacity=_pairs(capacity),
        used=_pairs(used),
        processes=_indices(pids, constants.PID_MAX),
        capacity_text=optional_text(capacity_text, 64),
    )


def _process(item: Any) -> ProcessUsage:
    pid, uid, user, name, membership, env, memory = items(item, 7)
    kind = membership_of(membership)
    key = None if env is None else environment_key(env)
    return ProcessUsage(
        pid=whole(pid, 1, constants.PID_MAX),
        uid=optional_whole(uid, 0, UID_MAX),
        username=optional_text(user, NAME),
        name=text(name, NAME),
        membership=kind,
        env=key,
        memory=_pairs(memory, second_optional=True),
    )


def _user(item: Any) -> UserUsage:
    uid, user, envs, attached, env_processes, processes, in_use, used, capacity, problem = items(
        item, 10
    )
    if problem is not None and problem not in PROBLEM_KINDS:
        raise WireError(f"{problem!r:.40} is no kind of state problem")
    return UserUsage(
        uid=whole(uid, 0, UID_MAX),
        username=text(user, NAME),
        environments=whole(envs, 0, COUNT),
        attached_devices=whole(attached, 0, COUNT),
        environment_processes=whole(env_processes, 0, COUNT),
        processes=whole(processes, 0, COUNT),
        devices_in_use=whole(in_use, 0, COUNT),
        memory_used=whole(used),
        memory_capacity=whole(capacity),
        state_problem=problem,
    )


def _problem(item: Any) -> tuple[str, str]:
    kind, line = items(item, 2)
    if kind not in PROBLEM_KINDS:
        raise WireError(f"{kind!r:.40} is no kind of state problem")
    return kind, text(line)


def decode_usage(body: Any) -> HostUsage:
    """What a host sent as its usage; WireError when it is not that."""
    if not isinstance(body, dict):
        raise WireError("the usage is not a JSON object")
    return HostUsage(
        time=number(body.get("time")),
        devices=tuple(_device(d) for d in items(body.get("devices"))),
        environments=tuple(_environment(e) for e in items(body.get("environments"))),
        processes=tuple(_process(p) for p in items(body.get("processes"))),
        users=tuple(_user(u) for u in items(body.get("users"))),
        problems=tuple(_problem(p) for p in items(body.get("problems", []))),
        gpu_errors=tuple(text(e) for e in items(body.get("gpu_errors", []))),
        partial=body.get("partial") is True,
    )
