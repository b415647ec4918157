"""What hosts and the controller say to each other: JSON, one object per line.

A host's snapshot is its Observation (devices, GPU processes with their identity and the
environment each belongs to as the host decided it, environments, attachments) plus what
names its boot: ``boot_id``, and ``boot_time`` (wall clock at boot) so that process starts of
different hosts can be put in one order. A plan names every process by pid, start (clock
ticks since that host's boot) and boot id, and every attachment by environment, owner,
device and time, so that the host can check each one again before it acts.

The controller decodes what hosts send with limits and type checks: a host that sends
nonsense is reported and left out, it never stops the controller.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from genv.domain import constants
from genv.domain.models import Attachment, Device, EnvConfig, Environment, RegisteredProcess
from genv.domain.observation import Membership, Observation, ObservedProcess, ProcessFacts, Usage

PROTOCOL = 1
MAX_LINE = 64 << 20  # one snapshot of a host with tens of thousands of processes fits
MAX_ITEMS = 200_000
MAX_TEXT = 4096


class WireError(ValueError):
    """What a host sent is not a snapshot or a reply of this protocol."""


# -- host side -----------------------------------------------------------------------------


def encode_observation(observation: Observation) -> dict[str, Any]:
    return {
        "devices": [
            [d.index, d.uuid, d.name, d.total_memory, d.used_memory] for d in observation.devices
        ],
        "processes": [_encode_process(p) for p in observation.processes],
        "environments": [encode_environment(e) for e in observation.environments],
        "attachments": [encode_attachment(a) for a in observation.attachments],
        "unusable_uids": sorted(observation.unusable_uids),
    }


def _encode_process(process: ObservedProcess) -> list[Any]:
    f = process.facts
    return [
        f.pid,
        f.start,
        f.uid,
        f.username,
        f.name,
        f.claimed_eid,
        f.environ_readable,
        f.exe,
        [[u.device_index, u.used_memory] for u in process.usage],
        process.membership.value,
        list(process.env.key) if process.env is not None else None,
        process.note,
    ]


def encode_environment(env: Environment) -> list[Any]:
    c = env.config
    return [
        env.eid,
        env.uid,
        env.username,
        env.creation,
        c.name,
        c.gpus,
        c.gpu_memory,
        [[p.pid, p.start] for p in env.processes],
        list(env.kernel_ids),
    ]


def encode_attachment(a: Attachment) -> list[Any]:
    return [a.device_index, a.eid, a.uid, a.time, a.gpu_memory, a.over_subscribed]


def dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode() + b"\n"


# -- controller side -----------------------------------------------------------------------


def loads(line: bytes) -> dict[str, Any]:
    if len(line) > MAX_LINE:
        raise WireError(f"a line of {len(line)} bytes is more than any snapshot")
    try:
        value = json.loads(line, parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:
        raise WireError(f"not JSON ({error})") from None
    if not isinstance(value, dict):
        raise WireError("not a JSON object")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _int(value: Any, low: int = 0, high: int = 2**63) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise WireError(f"{value!r:.40} is not a whole number in range")
    return value


def _opt_int(value: Any, low: int = 0, high: int = 2**63) -> int | None:
    return None if value is None else _int(value, low, high)


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WireError(f"{value!r:.40} is not a number")
    return float(value)


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise WireError(f"{value!r:.40} is not a text of at most {limit} characters")
    return value


def _opt_text(value: Any, limit: int = MAX_TEXT) -> str | None:
    return None if value is None else _text(value, limit)


def _list(value: Any, length: int | None = None) -> list[Any]:
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise WireError("not a list of bounded length")
    if length is not None and len(value) != length:
        raise WireError(f"a list of {len(value)} items where {length} were expected")
    return value


UID_MAX = 2**32 - 1

# The checked readers, for the other decoders of what hosts send (genv.metrics.usage_wire).
whole, optional_whole, number = _int, _opt_int, _float
text, optional_text, items = _text, _opt_text, _list


def membership_of(value: Any) -> Membership:
    try:
        return Membership(value)
    except ValueError:
        raise WireError(f"{value!r:.40} is no membership") from None


def environment_key(value: Any) -> tuple[int, str]:
    """An environment's (owner uid, id), as a host sends it."""
    owner, eid = _list(value, 2)
    return _int(owner, 0, UID_MAX), _text(eid, constants.MAX_ID_LENGTH)


def decode_environment(item: Any) -> Environment:
    eid, uid, user, creation, name, gpus, gpu_memory, procs, kernels = _list(item, 9)
    return Environment(
        eid=_text(eid, constants.MAX_ID_LENGTH),
        uid=_int(uid, 0, UID_MAX),
        username=_opt_text(user, 256),
        creation=_float(creation),
        config=EnvConfig(
            _opt_text(name, 256), _opt_int(gpus, 0, 1 << 20), _opt_text(gpu_memory, 64)
        ),
        processes=tuple(
            RegisteredProcess(_int(p[0], 1, constants.PID_MAX), _opt_int(p[1]))
            for p in (_list(entry, 2) for entry in _list(procs))
        ),
        kernel_ids=tuple(_text(k, 256) for k in _list(kernels)),
    )


def decode_attachment(item: Any) -> Attachment:
    index, eid, uid, time, gpu_memory, over = _list(item, 6)
    return Attachment(
        device_index=_int(index, 0, 1 << 20),
        eid=_text(eid, constants.MAX_ID_LENGTH),
        uid=_int(uid, 0, UID_MAX),
        time=_float(time),
        gpu_memory=_opt_text(gpu_memory, 64),
        over_subscribed=over is True,
    )


def decode_device(item: Any) -> Device:
    index, uuid, name, total, used = _list(item, 5)
    return Device(
        _int(index, 0, 1 << 20), _text(uuid, 256), _text(name, 256), _int(total), _opt_int(used)
    )


def decode_observation(body: dict[str, Any]) -> Observation:
    devices = tuple(decode_device(d) for d in _list(body.get("devices")))
    totals = {device.index: device.total_memory for device in devices}
    environments = tuple(decode_environment(e) for e in _list(body.get("environments")))
    by_key = {env.key: env for env in environments}
    processes = []
    for item in _list(body.get("processes")):
        (pid, start, uid, user, name, claim, readable, exe, usage, membership, env_key, note) = (
            _list(item, 12)
        )
        facts = ProcessFacts(
            pid=_int(pid, 1, constants.PID_MAX),
            start=_opt_int(start),
            uid=_opt_int(uid, 0, UID_MAX),
            username=_opt_text(user, 256),
            name=_text(name, 256),
            claimed_eid=_opt_text(claim, constants.MAX_ID_LENGTH),
            environ_readable=readable is True,
            exe=_opt_text(exe),
        )
        kind = membership_of(membership)
        env = None
        if env_key is not None:
            env = by_key.get(environment_key(env_key))
            if env is None:
                raise WireError("a process belongs to an environment the host did not list")
        if kind is Membership.IN_ENV and env is None:
            raise WireError("a process in an environment names none")
        used = tuple(_usage(entry, totals) for entry in _list(usage))
        processes.append(ObservedProcess(facts, used, kind, env, _text(note)))
    return Observation(
        devices=devices,
        processes=tuple(processes),
        environments=environments,
        attachments=tuple(decode_attachment(a) for a in _list(body.get("attachments"))),
        unusable_uids=frozenset(_int(u, 0, UID_MAX) for u in _list(body.get("unusable_uids"))),
    )


def _usage(entry: Any, totals: dict[int, int]) -> Usage:
    """Memory a process holds on one of the host's own devices, at most all of it: a host
    cannot make a user's usage on it outweigh the other hosts' (and get their processes
    terminated) with memory its GPUs do not have."""
    index, used = _list(entry, 2)
    index = _int(index, 0, 1 << 20)
    if index not in totals:
        raise WireError(f"a process uses device {index}, which the host did not list")
    return Usage(index, _opt_int(used, 0, max(totals[index], 0)))


@dataclass(frozen=True)
class HostFacts:
    """What names a host's boot and how its clock relates to the others'."""

    hostname: str
    version: str
    boot_id: str
    boot_time: float  # wall clock at boot, seconds since the epoch
    clock_ticks: int


def decode_host_facts(body: dict[str, Any]) -> HostFacts:
    protocol = body.get("protocol")
    if not isinstance(protocol, int) or protocol < PROTOCOL:
        raise WireError("the genv there speaks no protocol this genv understands")
    return HostFacts(
        hostname=_text(body.get("hostname", ""), 256),
        version=_text(body.get("genv", ""), 64),
        boot_id=_text(body.get("boot_id", ""), 64),
        boot_time=_boot_time(body.get("boot_time", 0.0)),
        clock_ticks=_int(body.get("clock_ticks", 100), 1, 1 << 20),
    )


def _boot_time(value: Any) -> float:
    """Wall-clock seconds at the host's boot: from the epoch to the year 2514 (a value past
    that would make every start time of that host infinite)."""
    seconds = _float(value)
    if not 0 <= seconds < constants.MAX_TIME:
        raise WireError(f"{value!r:.40} is not a boot time")
    return seconds


@dataclass(frozen=True)
class Listing:
    """What ``genv usage snapshot --type devices|envs`` says for tables and for activate."""

    devices: tuple[Device, ...] = ()
    available: tuple[int, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    environments: tuple[Environment, ...] = ()
    problems: tuple[str, ...] = field(default=())


def decode_listing(body: dict[str, Any]) -> Listing:
    decode_host_facts(body)
    return Listing(
        devices=tuple(decode_device(d) for d in _list(body.get("devices", []))),
        available=tuple(_int(i, 0, 1 << 20) for i in _list(body.get("available", []))),
        attachments=tuple(decode_attachment(a) for a in _list(body.get("attachments", []))),
        environments=tuple(decode_environment(e) for e in _list(body.get("environments", []))),
        problems=tuple(_text(p) for p in _list(body.get("problems", []))),
    )


def decode_problems(body: dict[str, Any]) -> dict[str, str]:
    value = body.get("problems", {})
    if not isinstance(value, dict) or len(value) > MAX_ITEMS:
        raise WireError("problems is not an object")
    return {_text(k): _text(v) for k, v in value.items()}
