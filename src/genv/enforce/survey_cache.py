"""The rules' findings on a daemon's machine, worked out again only where something changed.

``rules.survey`` looks at the whole observation. Its findings fall apart into groups that
depend on nothing outside them:

- per environment (key ``(uid, eid)``): ``env-devices`` and ``env-memory`` look at the
  environment, its attachments and its members, nothing else;
- per process outside any environment: ``non-env-processes`` looks at that process alone;
- per user, for the per-user limits: the user's attachments and environments, the members
  of those, and the processes that run as that user.

So when the observer says which processes changed (genv.enforce.observe.Change: same state,
these processes removed, those added), only their groups are surveyed again, each by the
very rule functions of ``rules`` on an observation of that group alone, and the findings of
all groups are put back into the order ``survey`` gives them. Anything else (the first
cycle, a new state, another configuration) starts over from the whole observation.
``tests/enforce/test_survey_cache.py`` checks, change after change, that the plan is the
one ``survey`` would give.
"""

from __future__ import annotations

from collections.abc import Iterable

from genv.domain.models import Attachment, Environment
from genv.domain.observation import Membership, Observation, ObservedProcess
from genv.enforce import rules
from genv.enforce.findings import Finding
from genv.enforce.observe import Change
from genv.enforce.plan import Plan, combine

_EnvKey = tuple[int, str]
_Group = tuple[str, object]  # ("env", (uid, eid)) or ("pid", pid)
_Sorted = list[tuple[tuple[int, ...], Finding]]  # findings with their place in survey's order

# Each rule's place in survey's order (the first part of a finding's sort key).
_NON_ENV, _DEVICES, _MEMORY, _USER_DEVICES, _USER_MEMORY = range(5)


def _group_of(process: ObservedProcess) -> _Group:
    if process.membership is Membership.IN_ENV and process.env is not None:
        return ("env", process.env.key)
    return ("pid", process.pid)


def _user_groups(process: ObservedProcess) -> Iterable[int]:
    """The users whose per-user findings ``process`` can change."""
    if process.facts.uid is not None:
        yield process.facts.uid
    if process.membership is Membership.IN_ENV and process.env is not None:
        yield process.env.uid


class SurveyCache:
    """Kept up to date with ``update(snapshot, change)`` every cycle; then ``plan()`` is the
    plan of ``combine(survey(snapshot, config))`` and ``unknown()`` the processes whose
    environment could not be told."""

    def __init__(self, config: rules.RuleConfig) -> None:
        self.config = config
        self._user_rules = (
            config.max_devices_per_user is not None
            or bool(config.max_devices_for_user)
            or config.max_memory_per_user is not None
            or bool(config.max_memory_for_user)
        )
        self._snapshot: Observation | None = None
        self._whole = False  # a snapshot the groups cannot stand for: survey it whole
        self._plan: Plan | None = None
        self._members: dict[_Group, dict[int, ObservedProcess]] = {}
        self._found: dict[_Group, _Sorted] = {}  # only groups with findings
        self._by_uid: dict[int, dict[int, ObservedProcess]] = {}  # facts.uid -> processes
        self._user_found: dict[int, _Sorted] = {}
        self._unknown: dict[int, ObservedProcess] = {}
        self._dirty: set[_Group] = set()
        self._dirty_uids: set[int] = set()
        self._envs: dict[_EnvKey, list[Environment]] = {}
        self._envs_of_uid: dict[int, list[Environment]] = {}
        self._attachments: dict[_EnvKey, list[Attachment]] = {}
        self._attachments_of_uid: dict[int, list[Attachment]] = {}
        self._place: dict[int, int] = {}  # id(environment) -> its place in the snapshot

    def update(self, snapshot: Observation, change: Change | None) -> None:
        """Take ``snapshot`` in: by ``change`` when it is about the snapshot taken in last."""
        if snapshot is self._snapshot:
            return
        if (
            self._whole
            or change is None
            or self._snapshot is None
            or change.previous is not self._snapshot
        ):
            self._start_over(snapshot)
        elif change.removed or change.added:
            self._apply(change)
        self._snapshot = snapshot

    def unknown(self) -> list[ObservedProcess]:
        """The processes of the snapshot whose environment could not be told, by pid."""
        return [self._unknown[pid] for pid in sorted(self._unknown)]

    def plan(self) -> Plan:
        snapshot = self._snapshot
        assert snapshot is not None, "update() first"
        if self._whole:
            if self._plan is None:
                self._plan = combine(rules.survey(snapshot, self.config))
            return self._plan
        for group in self._dirty:
            self._survey_group(group, snapshot)
        for uid in self._dirty_uids:
            self._survey_user(uid, snapshot)
        self._dirty = set()
        self._dirty_uids = set()
        found = [
            finding
            for _, finding in sorted(
                [item for items in self._found.values() for item in items]
                + [item for items in self._user_found.values() for item in items],
                key=lambda item: item[0],
            )
        ]
        last = self._plan
        if (
            last is not None
            and len(last.findings) == len(found)
            and all(a is b for a, b in zip(last.findings, found, strict=True))
        ):
            return last
        self._plan = combine(found)
        return self._plan

    # -- from the whole observation --------------------------------------------------------

    def _start_over(self, snapshot: Observation) -> None:
        self._plan = None
        processes = snapshot.processes
        self._unknown = {p.pid: p for p in processes if p.membership is Membership.UNKNOWN}
        # The observer's snapshots list each pid once, in order; survey keeps the order of
        # any other snapshot, which the groups would not.
        self._whole = not all(a.pid < b.pid for a, b in zip(processes, processes[1:], strict=False))
        if self._whole:
            return
        self._envs = {}
        self._envs_of_uid = {}
        self._place = {}
        for place, env in enumerate(snapshot.environments):
            self._envs.setdefault(env.key, []).append(env)
            self._envs_of_uid.setdefault(env.uid, []).append(env)
            self._place[id(env)] = place
        self._attachments = {}
        self._attachments_of_uid = {}
        for attachment in snapshot.attachments:
            self._attachments.setdefault(attachment.env_key, []).append(attachment)
            self._attachments_of_uid.setdefault(attachment.uid, []).append(attachment)
        self._members = {}
        self._by_uid = {}
        for process in processes:
            self._members.setdefault(_group_of(process), {})[process.pid] = process
            if process.facts.uid is not None:
                self._by_uid.setdefault(process.facts.uid, {})[process.pid] = process
        self._found = {}
        self._user_found = {}
        self._dirty = set(self._members)
        self._dirty_uids = {*self._by_uid, *self._attachments_of_uid} if self._user_rules else set()

    # -- what changed ----------------------------------------------------------------------

    def _apply(self, change: Change) -> None:
        for process in change.removed:
            if self._unknown.get(process.pid) is process:
                del self._unknown[process.pid]
            group = _group_of(process)
            members = self._members.get(group)
            if members is not None and members.get(process.pid) is process:
                del members[process.pid]
                if not members:
                    del self._members[group]
            self._dirty.add(group)
            uid = process.facts.uid
            if uid is not None and self._by_uid.get(uid, {}).get(process.pid) is process:
                del self._by_uid[uid][process.pid]
                if not self._by_uid[uid]:
                    del self._by_uid[uid]
            if self._user_rules:
                self._dirty_uids.update(_user_groups(process))
        for process in change.added:
            if process.membership is Membership.UNKNOWN:
                self._unknown[process.pid] = process
            group = _group_of(process)
            self._members.setdefault(group, {})[process.pid] = process
            self._dirty.add(group)
            if process.facts.uid is not None:
                self._by_uid.setdefault(process.facts.uid, {})[process.pid] = process
            if self._user_rules:
                self._dirty_uids.update(_user_groups(process))

    # -- one group -------------------------------------------------------------------------

    def _visible(self, processes: Iterable[ObservedProcess]) -> tuple[ObservedProcess, ...]:
        exempt_uids, exempt_programs = self.config.exempt_uids, self.config.exempt_programs
        return tuple(
            p
            for p in sorted(processes, key=_pid)
            if p.facts.exe not in exempt_programs and p.facts.uid not in exempt_uids
        )

    def _survey_group(self, group: _Group, snapshot: Observation) -> None:
        self._found.pop(group, None)
        members = self._members.get(group)
        if not members:
            return
        config = self.config
        visible = self._visible(members.values())
        if not visible:
            return
        found: _Sorted = []
        kind, key = group
        if kind == "pid":
            if config.non_env_processes:
                part = Observation(snapshot.devices, visible, (), (), snapshot.unusable_uids)
                for finding in rules.non_env_processes(part, config):
                    found.append(((_NON_ENV, finding.terminations[0].process.pid), finding))
        else:
            assert isinstance(key, tuple)
            envs = self._envs.get(key, [])
            attachments = tuple(self._attachments.get(key, ()))
            if config.env_devices:
                part = Observation(
                    snapshot.devices, visible, tuple(envs), attachments, snapshot.unusable_uids
                )
                for finding in rules.env_devices(part, config):
                    found.append(((_DEVICES, finding.terminations[0].process.pid), finding))
            if config.env_memory:
                for env in envs:
                    part = Observation(
                        snapshot.devices, visible, (env,), attachments, snapshot.unusable_uids
                    )
                    for number, finding in enumerate(rules.env_memory(part, config)):
                        found.append(((_MEMORY, self._place[id(env)], number), finding))
        if found:
            self._found[group] = found

    def _survey_user(self, uid: int, snapshot: Observation) -> None:
        """The per-user limits of ``uid``: its findings are about ``uid`` alone."""
        self._user_found.pop(uid, None)
        config = self.config
        found: _Sorted = []
        own = self._by_uid.get(uid, {})
        if config.max_devices_per_user is not None or config.max_devices_for_user:
            attachments = tuple(self._attachments_of_uid.get(uid, ()))
            if attachments:
                envs = self._envs_of_uid.get(uid, [])
                involved = dict(own)
                for env in envs:
                    involved.update(self._members.get(("env", env.key), {}))
                part = Observation(
                    snapshot.devices,
                    self._visible(involved.values()),
                    tuple(envs),
                    attachments,
                    snapshot.unusable_uids,
                )
                busy = {(uid, index) for p in own.values() for index in p.devices}
                for number, finding in enumerate(
                    rules.max_devices_per_user(part, config, busy=busy)
                ):
                    found.append(((_USER_DEVICES, uid, number), finding))
        if (config.max_memory_per_user is not None or config.max_memory_for_user) and own:
            part = Observation(
                snapshot.devices, self._visible(own.values()), (), (), snapshot.unusable_uids
            )
            for number, finding in enumerate(rules.max_memory_per_user(part, config)):
                found.append(((_USER_MEMORY, uid, number), finding))
        if found:
            self._user_found[uid] = found


def _pid(process: ObservedProcess) -> int:
    return process.pid
