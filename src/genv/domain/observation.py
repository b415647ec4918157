"""What one enforcement cycle observed: everything the rules look at, gathered once.

Which environment a GPU process belongs to is decided here, once, for the enforcer and the
nvidia-smi shim alike: a process makes a claim (``GENV_ENVIRONMENT_ID``), and the claim holds
only when the process runs as the owner of that environment (or as root, e.g. in a container
started from it). "Could not tell" is its own answer, and nothing acts on a process in that
state; but a user who broke their own state file is not shielded by it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from enum import Enum
from functools import cached_property

from genv.domain.models import Attachment, Device, Environment
from genv.domain.values import value


class Membership(Enum):
    IN_ENV = "in-env"  # claims an environment it owns
    NO_ENV = "no-env"  # claims none, or one that no longer exists
    IMPOSTOR = "impostor"  # claims an environment of another user
    UNKNOWN = "unknown"  # its claim or the environment's state could not be read


@value
class ProcessFacts:
    """What the system says about a process, read once per (pid, start).

    ``start`` is in clock ticks since boot (genv.system.procfs); ``uid`` the real uid;
    ``exe`` the resolved path of its program, the only name of it to match rules against;
    ``name`` is what it calls itself, for people to read (escaped, never matched).
    """

    pid: int
    start: int | None
    uid: int | None
    username: str | None
    name: str
    claimed_eid: str | None
    environ_readable: bool = True
    exe: str | None = None


@value
class Usage:
    """Memory a process holds on one device (None when the driver does not say)."""

    device_index: int
    used_memory: int | None


@value
class ObservedProcess:
    """A GPU process with its facts, its usage per device and the environment it belongs to."""

    facts: ProcessFacts
    usage: tuple[Usage, ...]
    membership: Membership
    env: Environment | None = None
    note: str = ""  # why it is not IN_ENV, for messages

    @property
    def pid(self) -> int:
        return self.facts.pid

    @property
    def devices(self) -> tuple[int, ...]:
        return tuple(sorted({u.device_index for u in self.usage}))

    def memory_on(self, index: int) -> int:
        return sum(u.used_memory or 0 for u in self.usage if u.device_index == index)

    @property
    def total_memory(self) -> int:
        return sum(u.used_memory or 0 for u in self.usage)

    @property
    def eid(self) -> str | None:
        return self.env.eid if self.env is not None else None


@value
class Observation:
    devices: tuple[Device, ...]
    processes: tuple[ObservedProcess, ...]
    environments: tuple[Environment, ...]
    attachments: tuple[Attachment, ...]
    unusable_uids: frozenset[int] = frozenset()

    @cached_property
    def _attachments_by_env(self) -> dict[tuple[int, str], list[Attachment]]:
        grouped: dict[tuple[int, str], list[Attachment]] = defaultdict(list)
        for a in self.attachments:
            grouped[a.env_key].append(a)
        return grouped

    def attachments_of(self, env: Environment) -> list[Attachment]:
        return self._attachments_by_env.get(env.key, [])

    @cached_property
    def _members(self) -> dict[tuple[int, str], list[ObservedProcess]]:
        members: dict[tuple[int, str], list[ObservedProcess]] = defaultdict(list)
        for p in self.processes:
            if p.membership is Membership.IN_ENV and p.env is not None:
                members[p.env.key].append(p)
        return members

    def attached_indices(self, env: Environment) -> set[int]:
        return {a.device_index for a in self.attachments_of(env)}

    def members(self, env: Environment) -> list[ObservedProcess]:
        return self._members.get(env.key, [])


def index_by_eid(environments: Sequence[Environment]) -> dict[str, list[Environment]]:
    """Environments by id, so that resolving each process costs one lookup."""
    index: dict[str, list[Environment]] = defaultdict(list)
    for env in environments:
        index[env.eid].append(env)
    return index


def resolve(
    facts: ProcessFacts,
    environments: Mapping[str, Sequence[Environment]] | Sequence[Environment],
    unusable_uids: frozenset[int],
    unknown_uids: frozenset[int] = frozenset(),
    legacy_eids: frozenset[str] = frozenset(),
) -> tuple[Membership, Environment | None, str]:
    """The environment ``facts`` belongs to, and why not when it belongs to none.

    ``environments`` maps ids to the environments of that id (see index_by_eid; ids are
    unique per owner). ``unusable_uids``: users whose state could not be used; among them
    ``unknown_uids``, those whose state is unknown through no fault of theirs.
    ``legacy_eids``: the ids genv 1.4.3's files name while root has not taken them over: a
    claim of one of those that matches no environment here could not be told.
    """
    membership, env, note = _resolve(facts, environments, unusable_uids, unknown_uids)
    if (
        membership in (Membership.NO_ENV, Membership.IMPOSTOR)  # ids of 1.4.3 were not per owner
        and facts.claimed_eid
        and facts.claimed_eid in legacy_eids
        and not any(e.uid == facts.uid for e in _claimed(environments, facts.claimed_eid))
    ):
        return (
            Membership.UNKNOWN,
            None,
            f"it claims environment {facts.claimed_eid} of genv 1.4.3, which root has not "
            "taken over yet (sudo genv migrate)",
        )
    return membership, env, note


def _claimed(
    environments: Mapping[str, Sequence[Environment]] | Sequence[Environment], eid: str
) -> Sequence[Environment]:
    if isinstance(environments, Mapping):
        return environments.get(eid, ())
    return [env for env in environments if env.eid == eid]


def _resolve(
    facts: ProcessFacts,
    environments: Mapping[str, Sequence[Environment]] | Sequence[Environment],
    unusable_uids: frozenset[int],
    unknown_uids: frozenset[int],
) -> tuple[Membership, Environment | None, str]:
    if not facts.environ_readable or facts.uid is None:
        return Membership.UNKNOWN, None, "its environment variables could not be read"
    eid = facts.claimed_eid
    if not eid:
        return Membership.NO_ENV, None, ""
    if not isinstance(environments, Mapping):
        environments = index_by_eid(environments)
    claimed = environments.get(eid, ())
    for env in claimed:
        if env.uid == facts.uid:
            return Membership.IN_ENV, env, ""
    if facts.uid == 0:
        if len(claimed) == 1:
            return Membership.IN_ENV, claimed[0], ""
        if claimed:
            return (
                Membership.UNKNOWN,
                None,
                f"it claims environment {eid}, which several users have",
            )
        if unusable_uids - {0}:  # it may be in an environment of theirs
            return (
                Membership.UNKNOWN,
                None,
                f"it claims environment {eid}, and some state file could not be read",
            )
        if 0 in unusable_uids:
            return (
                Membership.NO_ENV,
                None,
                f"it claims environment {eid}, but its owner's state file is unusable",
            )
        return Membership.NO_ENV, None, ""
    if facts.uid in unknown_uids:
        return (
            Membership.UNKNOWN,
            None,
            f"it claims environment {eid}, whose state file could not be read",
        )
    if facts.uid in unusable_uids:
        # Its owner's own file is broken: the owner could have fixed it, so it shields nothing.
        return (
            Membership.NO_ENV,
            None,
            f"it claims environment {eid}, but its owner's state file is unusable",
        )
    if claimed:
        owner = claimed[0].username or f"uid {claimed[0].uid}"
        return (
            Membership.IMPOSTOR,
            None,
            f"it claims environment {eid} of {owner}, which it does not own",
        )
    return Membership.NO_ENV, None, ""
