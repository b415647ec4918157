"""The enforcement rules: pure functions from a snapshot to findings. Nothing here touches the
system, so tests call them directly with hand-made snapshots."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping

from genv.domain.memory import MemoryFormatError, format_memory, parse_memory
from genv.domain.models import Attachment
from genv.domain.observation import Membership, Observation, ObservedProcess
from genv.domain.values import field, replace, value
from genv.enforce.findings import Detachment, Finding, Termination

NON_ENV_PROCESSES = "non-env-processes"
ENV_DEVICES = "env-devices"
ENV_MEMORY = "env-memory"
MAX_DEVICES_PER_USER = "max-devices-per-user"
MAX_MEMORY_PER_USER = "max-memory-per-user"


@value
class RuleConfig:
    """Which rules run, with their limits.

    Users are named by uid and programs by the resolved path of their executable: the names
    an admin typed are looked up once, at start-up (genv.cli.enforce), so that a lookup that
    fails later cannot turn a rule off, and no process can pose as exempt by its own name.
    Memory limits keep the text the admin wrote, for the messages.
    """

    non_env_processes: bool = False
    env_devices: bool = True
    env_memory: bool = True
    max_devices_per_user: int | None = None
    max_devices_for_user: Mapping[int, int] = field(default_factory=dict)
    max_memory_per_user: str | None = None
    max_memory_for_user: Mapping[int, str] = field(default_factory=dict)
    exempt_uids: frozenset[int] = frozenset()
    exempt_programs: frozenset[str] = frozenset()

    def __hash__(self) -> int:  # the mappings are not hashable; identity is enough
        return id(self)


def survey(snapshot: Observation, config: RuleConfig) -> list[Finding]:
    """Run every enabled rule; exempt users and programs are invisible to all of them.

    Invisible, not absent: whether a user has work on a device (which decides what to detach,
    and what the line says about it) is told from all of their processes, exempt ones too.
    """
    visible = _without_exempt(snapshot, config)
    findings: list[Finding] = []
    for enabled, rule in _RULES:
        if not enabled(config):
            continue
        if rule is max_devices_per_user:
            findings.extend(max_devices_per_user(visible, config, busy=busy_devices(snapshot)))
        else:
            findings.extend(rule(visible, config))
    return findings


def busy_devices(snapshot: Observation) -> set[tuple[int, int]]:
    """(uid, device index) for every device where a process of that user runs: any process,
    in an environment or not, whatever the rules make of it."""
    return {
        (process.facts.uid, index)
        for process in snapshot.processes
        if process.facts.uid is not None
        for index in process.devices
    }


def _without_exempt(snapshot: Observation, config: RuleConfig) -> Observation:
    if not config.exempt_uids and not config.exempt_programs:
        return snapshot
    kept = tuple(
        p
        for p in snapshot.processes
        if p.facts.exe not in config.exempt_programs and p.facts.uid not in config.exempt_uids
    )
    return Observation(
        devices=snapshot.devices,
        processes=kept,
        environments=snapshot.environments,
        attachments=snapshot.attachments,
        unusable_uids=snapshot.unusable_uids,
    )


def _acted_on(process: ObservedProcess) -> bool:
    """Processes whose environment could not be told are never acted on."""
    return process.membership is not Membership.UNKNOWN


def _username(process: ObservedProcess) -> str:
    facts = process.facts
    return facts.username or (f"uid {facts.uid}" if facts.uid is not None else "unknown user")


def _process_details(process: ObservedProcess, devices: tuple[int, ...]) -> dict:
    """What a finding about one process says about it, for --log-format json."""
    return {
        "pid": process.pid,
        "uid": process.facts.uid,
        "user": process.facts.username,
        "environment": process.eid,
        "process": process.facts.name,
        "device": list(devices),
        "memory": process.total_memory,
    }


def _newest_first(processes: list[ObservedProcess]) -> list[ObservedProcess]:
    return sorted(processes, key=lambda p: (p.facts.start or 0, p.pid), reverse=True)


# -- non-environment processes -------------------------------------------------------------


def non_env_processes(snapshot: Observation, config: RuleConfig) -> list[Finding]:
    findings = []
    for process in snapshot.processes:
        if process.membership not in (Membership.NO_ENV, Membership.IMPOSTOR):
            continue
        message = f"Process {process.pid} is not running in a GPU environment"
        if process.note:  # an impostor, or a user whose own state file is unusable
            message += f": {process.note}"
        findings.append(
            Finding(
                NON_ENV_PROCESSES,
                message,
                terminations=(Termination(process, NON_ENV_PROCESSES, message, process.devices),),
                details=_process_details(process, process.devices),
            )
        )
    return findings


# -- environment devices -------------------------------------------------------------------


def env_devices(snapshot: Observation, config: RuleConfig) -> list[Finding]:
    findings = []
    attached_of: dict[tuple[int, str], set[int]] = {}  # once per environment, not per process
    for process in snapshot.processes:
        if process.membership is not Membership.IN_ENV or process.env is None:
            continue
        key = (process.env.uid, process.env.eid)
        attached = attached_of.get(key)
        if attached is None:
            attached = attached_of[key] = snapshot.attached_indices(process.env)
        outside = [index for index in process.devices if index not in attached]
        if not outside:
            continue
        message = (
            f"Process {process.pid} from environment {process.env.eid} is using "
            f"non-attached GPU(s) {','.join(str(index) for index in outside)}"
        )
        findings.append(
            Finding(
                ENV_DEVICES,
                message,
                terminations=(Termination(process, ENV_DEVICES, message, tuple(outside)),),
                details=_process_details(process, tuple(outside)),
            )
        )
    return findings


# -- environment memory capacity -----------------------------------------------------------


def env_memory(snapshot: Observation, config: RuleConfig) -> list[Finding]:
    findings = []
    parsed: dict[str, int | None] = {}  # capacity texts repeat across environments
    for env in snapshot.environments:
        members = snapshot.members(env)
        if not members:
            continue
        capacities = {
            a.device_index: a.gpu_memory for a in snapshot.attachments_of(env) if a.gpu_memory
        }
        if not capacities and not env.config.gpu_memory:
            continue  # no capacity anywhere: nothing to check
        on_devices: dict[int, list[ObservedProcess]] = defaultdict(list)
        for p in members:
            for i in p.devices:
                on_devices[i].append(p)
        for index in sorted(on_devices):
            capacity_text = capacities.get(index) or env.config.gpu_memory
            if not capacity_text:
                continue
            if capacity_text not in parsed:
                parsed[capacity_text] = _parse_capacity(capacity_text)
            capacity = parsed[capacity_text]
            if capacity is None:
                continue  # users write their own state files: no capacity is known
            on_device = on_devices[index]
            used = sum(p.memory_on(index) for p in on_device)
            if used <= capacity:
                continue
            message = (
                f"Environment {env.eid} is using {format_memory(used)} on device {index} "
                f"which is {format_memory(used - capacity)} over its capacity of {capacity_text}"
            )
            victims = _greedy(
                _newest_first([p for p in on_device if p.memory_on(index) > 0]),
                used - capacity,
                _memory_on(index),
                _newest_of_env(env.eid, index),
                ENV_MEMORY,
            )
            findings.append(
                Finding(
                    ENV_MEMORY,
                    message,
                    terminations=tuple(victims),
                    details={
                        "uid": env.uid,
                        "user": env.username,
                        "environment": env.eid,
                        "device": [index],
                        "memory": used,
                        "capacity": capacity,
                    },
                )
            )
    return findings


def _memory_on(index: int) -> Callable[[ObservedProcess], int]:
    return lambda process: process.memory_on(index)


def _total_memory(process: ObservedProcess) -> int:
    return process.total_memory


def _newest_of_env(eid: str, index: int) -> Callable[[ObservedProcess, int], str]:
    def reason(process: ObservedProcess, freed: int) -> str:
        return (
            f"it is the newest process of environment {eid} on device {index} "
            f"(frees {format_memory(freed)})"
        )

    return reason


def _newest_of_user(username: str) -> Callable[[ObservedProcess, int], str]:
    def reason(process: ObservedProcess, freed: int) -> str:
        return f"it is the newest process of user {username} (frees {format_memory(freed)})"

    return reason


def _parse_capacity(text: str) -> int | None:
    try:
        return parse_memory(text)
    except MemoryFormatError:
        return None


def _greedy(
    candidates: list[ObservedProcess],
    excess: int,
    size: Callable[[ObservedProcess], int],
    reason: Callable[[ObservedProcess, int], str],
    rule: str,
) -> list[Termination]:
    """Take candidates in order until ``excess`` bytes are freed."""
    victims = []
    freed = 0
    for process in candidates:
        if freed >= excess:
            break
        freed += size(process)
        victims.append(Termination(process, rule, reason(process, size(process)), process.devices))
    if len(victims) < len(candidates):
        victims = [replace(victim, chosen=True) for victim in victims]
    return victims


# -- devices per user ----------------------------------------------------------------------


def _owner_name(uid: int, snapshot: Observation) -> str:
    """The user's name as the system knows it (environments carry it; see observe)."""
    for env in snapshot.environments:
        if env.uid == uid and env.username:
            return env.username
    for process in snapshot.processes:
        if process.facts.uid == uid and process.facts.username:
            return process.facts.username
    return f"uid {uid}"


def max_devices_per_user(
    snapshot: Observation, config: RuleConfig, busy: set[tuple[int, int]] | None = None
) -> list[Finding]:
    """``busy``: (uid, device) where the user has any process (see busy_devices; by default
    from ``snapshot``): a device is said to hold no work only when none of theirs runs there."""
    findings = []
    by_uid: dict[int, list[Attachment]] = defaultdict(list)
    for attachment in snapshot.attachments:
        by_uid[attachment.uid].append(attachment)
    envs = {env.key: env for env in snapshot.environments}
    running = busy if busy is not None else busy_devices(snapshot)
    for uid, attachments in sorted(by_uid.items()):
        if uid in config.exempt_uids:
            continue
        limit = config.max_devices_for_user.get(uid, config.max_devices_per_user)
        if limit is None:
            continue
        devices = sorted({a.device_index for a in attachments})
        over = len(devices) - limit
        if over <= 0:
            continue
        username = _owner_name(uid, snapshot)
        message = (
            f"User {username} is using {len(devices)} devices which is {over} more than "
            "the maximum allowed"
        )
        busy_on = {index: (uid, index) in running for index in devices}
        latest = {
            index: max(a.time for a in attachments if a.device_index == index) for index in devices
        }
        # Least work lost: devices where no process of the user runs at all go first; then
        # the most recently attached.
        chosen = sorted(devices, key=lambda index: (busy_on[index], -latest[index]))[:over]
        detachments = []
        terminations = []
        choice = len(devices) > over
        for index in chosen:
            reason = (
                f"no process of user {username} runs on device {index}, so no work is lost"
                if not busy_on[index]
                else f"device {index} is the one user {username} attached most recently"
            )
            for a in attachments:
                if a.device_index != index:
                    continue
                detachments.append(
                    Detachment(
                        a.eid, a.uid, username, index, MAX_DEVICES_PER_USER, reason, chosen=choice
                    )
                )
                env = envs.get(a.env_key)
                for process in snapshot.members(env) if env else ():
                    if index in process.devices:
                        terminations.append(
                            Termination(
                                process,
                                MAX_DEVICES_PER_USER,
                                f"its environment {a.eid} is detached from device {index}",
                                process.devices,
                            )
                        )
        findings.append(
            Finding(
                MAX_DEVICES_PER_USER,
                message,
                terminations=tuple(terminations),
                detachments=tuple(detachments),
                details={
                    "uid": uid,
                    "user": username,
                    "device": devices,
                    "devices": len(devices),
                    "over": over,
                },
            )
        )
    return findings


# -- GPU memory per user -------------------------------------------------------------------


def max_memory_per_user(snapshot: Observation, config: RuleConfig) -> list[Finding]:
    findings = []
    by_uid: dict[int, list[ObservedProcess]] = defaultdict(list)
    for process in snapshot.processes:
        if _acted_on(process) and process.facts.uid is not None:
            by_uid[process.facts.uid].append(process)
    for uid, processes in sorted(by_uid.items()):
        limit_text = config.max_memory_for_user.get(uid, config.max_memory_per_user)
        if limit_text is None:
            continue
        limit = parse_memory(limit_text)
        used = sum(p.total_memory for p in processes)
        if used <= limit:
            continue
        username = _username(processes[0])
        message = (
            f"User {username} is using {format_memory(used)} of GPU memory which is "
            f"{format_memory(used - limit)} over the maximum of {limit_text}"
        )
        victims = _greedy(
            _newest_first([p for p in processes if p.total_memory > 0]),
            used - limit,
            _total_memory,
            _newest_of_user(username),
            MAX_MEMORY_PER_USER,
        )
        findings.append(
            Finding(
                MAX_MEMORY_PER_USER,
                message,
                terminations=tuple(victims),
                details={
                    "uid": uid,
                    "user": username,
                    "device": sorted({i for p in processes for i in p.devices}),
                    "memory": used,
                    "limit": limit,
                },
            )
        )
    return findings


_RULES: tuple[tuple[Callable[[RuleConfig], bool], Callable[..., list[Finding]]], ...] = (
    (lambda c: c.non_env_processes, non_env_processes),
    (lambda c: c.env_devices, env_devices),
    (lambda c: c.env_memory, env_memory),
    (
        lambda c: c.max_devices_per_user is not None or bool(c.max_devices_for_user),
        max_devices_per_user,
    ),
    (
        lambda c: c.max_memory_per_user is not None or bool(c.max_memory_for_user),
        max_memory_per_user,
    ),
)
