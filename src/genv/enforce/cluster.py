"""Enforcement across hosts: the local rules, with per-user limits counted on all hosts.

Rules that concern one host (non-env-processes, env-devices, env-memory) run on each host's
own Observation, unchanged, so their messages name the host's own pids, environments and
devices. The per-user rules (max-devices-per-user/for-user, max-memory-per-user/for-user) run
once, on a combined Observation of every host that answered this cycle, built so that the
very same rule code counts a user's use everywhere and picks victims cluster-wide by the
same policy as on one host:

- a user is one user on every host by name (uids may differ from host to host); a uid that
  has no name on its host stays that host's own (``uid 1234@host``);
- a device gets a cluster-wide number, an environment the id ``EID@HOST``, a process a
  cluster-wide pid, and its start becomes the wall-clock time it began (the only clock
  shared by hosts: boot-relative starts of different hosts cannot be compared);
- the findings' actions are then mapped back to each host's own processes (pid, start),
  attachments and device numbers, and the devices named in their reasons to ``N on HOST``.

A host that did not answer is not in the combined view: what it holds is unknown, not zero,
so a cross-host limit acts only on the excess that the hosts that answered already show.
Pure: no I/O, so tests call it with hand-made observations.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from genv.domain.models import Attachment, Device, Environment
from genv.domain.observation import Observation, ObservedProcess, Usage
from genv.domain.values import replace
from genv.enforce.findings import Detachment, Finding, Termination
from genv.enforce.plan import Plan, combine
from genv.enforce.rules import RuleConfig, survey

FIRST_DEVICE = 1_000_000  # cluster-wide device numbers: never a real index, easy to find


@dataclass(frozen=True)
class HostView:
    """One host's observation of this cycle, with what puts its clock beside the others'."""

    host: str
    observation: Observation
    boot_time: float = 0.0  # wall clock at boot
    clock_ticks: int = 100


@dataclass(frozen=True)
class ClusterRules:
    """The rules of ``genv remote enforce``; users by name, programs by full path."""

    non_env_processes: bool = False
    env_devices: bool = True
    env_memory: bool = True
    max_devices_per_user: int | None = None
    max_devices_for_user: Mapping[str, int] = field(default_factory=dict)
    max_memory_per_user: str | None = None
    max_memory_for_user: Mapping[str, str] = field(default_factory=dict)
    exempt_users: frozenset[str] = frozenset()
    exempt_programs: frozenset[str] = frozenset()

    @property
    def per_user(self) -> bool:
        return (
            self.max_devices_per_user is not None
            or bool(self.max_devices_for_user)
            or self.max_memory_per_user is not None
            or bool(self.max_memory_for_user)
        )

    def __hash__(self) -> int:
        return id(self)


@dataclass(frozen=True)
class ClusterFinding:
    """A finding, the host it is about (None: counted across hosts), and its actions, each
    with the host it is carried out on."""

    host: str | None
    finding: Finding
    terminations: tuple[tuple[str, Termination], ...] = ()
    detachments: tuple[tuple[str, Detachment], ...] = ()


@dataclass(frozen=True)
class ClusterPlan:
    findings: tuple[ClusterFinding, ...]
    plans: Mapping[str, Plan]  # what each host does: every process and attachment once

    @property
    def empty(self) -> bool:
        return not self.findings


def plan_cluster(views: Sequence[HostView], rules: ClusterRules) -> ClusterPlan:
    """The findings of every rule over the hosts that answered, and each host's plan."""
    findings: list[ClusterFinding] = []
    by_host: dict[str, list[Finding]] = {view.host: [] for view in views}
    for view in views:
        for finding in survey(view.observation, _host_config(view.observation, rules)):
            findings.append(
                ClusterFinding(
                    view.host,
                    finding,
                    tuple((view.host, t) for t in finding.terminations),
                    tuple((view.host, d) for d in finding.detachments),
                )
            )
            by_host[view.host].append(finding)
    if rules.per_user and views:
        combined = Combined(views)
        for finding in survey(combined.observation, combined.config(rules)):
            translated = combined.translate(finding)
            findings.append(translated)
            for host in {h for h, _ in translated.terminations} | {
                h for h, _ in translated.detachments
            }:
                by_host[host].append(
                    replace(
                        finding,
                        terminations=tuple(t for h, t in translated.terminations if h == host),
                        detachments=tuple(d for h, d in translated.detachments if h == host),
                    )
                )
    return ClusterPlan(tuple(findings), {host: combine(f) for host, f in by_host.items()})


def _host_config(observation: Observation, rules: ClusterRules) -> RuleConfig:
    """The per-host rules for one host; exempt users by their uid there."""
    exempt: set[int] = set()
    if rules.exempt_users:
        for env in observation.environments:
            if env.username in rules.exempt_users:
                exempt.add(env.uid)
        for process in observation.processes:
            f = process.facts
            if f.uid is not None and f.username in rules.exempt_users:
                exempt.add(f.uid)
    return RuleConfig(
        non_env_processes=rules.non_env_processes,
        env_devices=rules.env_devices,
        env_memory=rules.env_memory,
        exempt_uids=frozenset(exempt),
        exempt_programs=rules.exempt_programs,
    )


_DEVICE = re.compile(r"\bdevice (\d+)\b")


class Combined:
    """The hosts' observations as one, and the way back from it (see the module's text)."""

    def __init__(self, views: Sequence[HostView]) -> None:
        self._devices: dict[int, tuple[str, int]] = {}
        self._device_of: dict[tuple[str, int], int] = {}
        self._users: dict[str, int] = {}  # name -> cluster uid
        self._names: dict[int, str] = {}  # cluster uid -> name
        self._local_uid: dict[tuple[str, int], int] = {}  # (host, cluster uid) -> uid there
        self._envs: dict[tuple[str, int, str], Environment] = {}
        self._processes: dict[int, tuple[str, ObservedProcess]] = {}
        devices: list[Device] = []
        environments: list[Environment] = []
        attachments: list[Attachment] = []
        processes: list[ObservedProcess] = []
        for view in views:
            obs = view.observation
            names = _names_on(obs)
            for d in obs.devices:
                devices.append(replace(d, index=self._device(view.host, d.index)))
            for env in obs.environments:
                uid = self._user(view.host, env.uid, names)
                merged = replace(
                    env, eid=f"{env.eid}@{view.host}", uid=uid, username=self.name_of(uid)
                )
                self._envs[(view.host, env.uid, env.eid)] = merged
                environments.append(merged)
            for a in obs.attachments:
                attachments.append(
                    replace(
                        a,
                        device_index=self._device(view.host, a.device_index),
                        eid=f"{a.eid}@{view.host}",
                        uid=self._user(view.host, a.uid, names),
                    )
                )
            for p in obs.processes:
                processes.append(self._process(view, p, names))
        self.observation = Observation(
            devices=tuple(devices),
            processes=tuple(processes),
            environments=tuple(environments),
            attachments=tuple(attachments),
        )

    # -- building ----------------------------------------------------------------------

    def _device(self, host: str, index: int) -> int:
        number = self._device_of.get((host, index))
        if number is None:
            number = FIRST_DEVICE + len(self._devices)
            self._device_of[(host, index)] = number
            self._devices[number] = (host, index)
        return number

    def _user(self, host: str, uid: int, names: Mapping[int, str]) -> int:
        name = names.get(uid) or f"uid {uid}@{host}"
        number = self._users.get(name)
        if number is None:
            number = self._users[name] = len(self._users) + 1
            self._names[number] = name
        self._local_uid[(host, number)] = uid
        return number

    def name_of(self, cluster_uid: int) -> str:
        return self._names.get(cluster_uid, f"uid {cluster_uid}")

    def _process(
        self, view: HostView, p: ObservedProcess, names: Mapping[int, str]
    ) -> ObservedProcess:
        f = p.facts
        uid = self._user(view.host, f.uid, names) if f.uid is not None else None
        start = None
        if f.start is not None:  # microseconds of wall clock: one order for all hosts
            start = round((view.boot_time + f.start / view.clock_ticks) * 1_000_000)
        pid = len(self._processes) + 2
        self._processes[pid] = (view.host, p)
        env = self._envs.get((view.host, *p.env.key)) if p.env is not None else None
        return ObservedProcess(
            facts=replace(
                f,
                pid=pid,
                start=start,
                uid=uid,
                username=self.name_of(uid) if uid is not None else None,
            ),
            usage=tuple(
                Usage(self._device(view.host, u.device_index), u.used_memory) for u in p.usage
            ),
            membership=p.membership,
            env=env,
            note=p.note,
        )

    def config(self, rules: ClusterRules) -> RuleConfig:
        """The per-user rules alone, users by their cluster uid."""
        users = self._users
        return RuleConfig(
            non_env_processes=False,
            env_devices=False,
            env_memory=False,
            max_devices_per_user=rules.max_devices_per_user,
            max_devices_for_user={
                users[name]: n for name, n in rules.max_devices_for_user.items() if name in users
            },
            max_memory_per_user=rules.max_memory_per_user,
            max_memory_for_user={
                users[name]: m for name, m in rules.max_memory_for_user.items() if name in users
            },
            exempt_uids=frozenset(users[name] for name in rules.exempt_users if name in users),
            exempt_programs=rules.exempt_programs,
        )

    # -- the way back ------------------------------------------------------------------

    def device_name(self, number: int) -> str:
        host, index = self._devices[number]
        return f"{host}:{index}"

    def _text(self, text: str) -> str:
        def local(match: re.Match[str]) -> str:
            found = self._devices.get(int(match.group(1)))
            return match.group(0) if found is None else f"device {found[1]} on {found[0]}"

        return _DEVICE.sub(local, text)

    def translate(self, finding: Finding) -> ClusterFinding:
        terminations = []
        for t in finding.terminations:
            host, process = self._processes[t.process.pid]
            terminations.append(
                (
                    host,
                    Termination(
                        process,
                        t.rule,
                        self._text(t.reason),
                        tuple(self._devices[g][1] for g in t.devices),
                        t.chosen,
                    ),
                )
            )
        detachments = []
        for d in finding.detachments:
            host, index = self._devices[d.device_index]
            eid = d.eid[: -len(host) - 1] if d.eid.endswith(f"@{host}") else d.eid
            detachments.append(
                (
                    host,
                    Detachment(
                        eid,
                        self._local_uid[(host, d.uid)],
                        d.username,
                        index,
                        d.rule,
                        self._text(d.reason),
                        d.chosen,
                    ),
                )
            )
        details = dict(finding.details)
        details["uid"] = None
        if isinstance(details.get("device"), list):
            details["device"] = [self.device_name(g) for g in details["device"]]
        details["hosts"] = sorted(
            {h for h, _ in terminations}
            | {h for h, _ in detachments}
            | {self._devices[g][0] for g in finding.details.get("device", ()) or ()}
        )
        local = replace(
            finding,
            message=self._text(finding.message),
            terminations=tuple(t for _, t in terminations),
            detachments=tuple(d for _, d in detachments),
            details=details,
        )
        return ClusterFinding(None, local, tuple(terminations), tuple(detachments))


def _names_on(observation: Observation) -> dict[int, str]:
    """Each uid's name on one host, as that host's system knows it."""
    names: dict[int, str] = {}
    for env in observation.environments:
        if env.username:
            names.setdefault(env.uid, env.username)
    for p in observation.processes:
        if p.facts.uid is not None and p.facts.username:
            names.setdefault(p.facts.uid, p.facts.username)
    return names
