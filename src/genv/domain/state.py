"""A consistent, read-only view of every user's live environments and attachments."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from functools import cached_property

from genv.domain.models import Attachment, Environment
from genv.domain.observation import Membership, ProcessFacts, resolve
from genv.domain.values import field, value


@value
class StateProblem:
    """A state file that could not be used.

    ``owner_fault`` tells who could fix it. True: its content, its permissions or a planted
    name, which its owner chose or can repair; the owner is then treated as having no
    environments, so nobody shields their processes by breaking their own file. False: the
    reader failed (an I/O error), so the owner's records are unknown and nothing is done to
    them. ``uid`` None: a file that concerns nobody (planted under someone else's name).
    """

    path: str
    uid: int | None
    message: str
    owner_fault: bool = True
    # The reader may not read the file, though others (root) may: what it holds is unknown
    # here, not absent (see State.held_on).
    hidden: bool = False

    def line(self) -> str:
        return f"state file {self.path} {self.message}"


@value
class State:
    environments: tuple[Environment, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    problems: tuple[StateProblem, ...] = ()
    # What root last saw users hold, for the users whose file cannot be used now (see store).
    # Not part of what the state *is* for enforcement: two states that differ only here are
    # the same to the rules.
    holdings: tuple[Attachment, ...] = field(default=(), compare=False)
    holdings_published: bool = field(default=False, compare=False)
    # genv 1.4.3's state that root has not taken over yet (genv.store.legacy): the ids its
    # files name, and the devices they say its live environments hold. Claims anyone could
    # have written; they only ever make genv more careful (never terminate, never give).
    legacy_eids: frozenset[str] = frozenset()
    legacy_held: tuple[Attachment, ...] = ()

    # -- who is unknown ---------------------------------------------------------------------

    @cached_property
    def unusable_uids(self) -> frozenset[int]:
        """Users whose records could not be used, for any reason."""
        return frozenset(p.uid for p in self.problems if p.uid is not None)

    @cached_property
    def hidden_uids(self) -> frozenset[int]:
        """Users whose records this reader cannot see, though they may exist (permissions, an
        I/O error); a corrupt file is no such case: nobody can see anything in it."""
        return frozenset(
            p.uid for p in self.problems if p.uid is not None and (p.hidden or not p.owner_fault)
        )

    @cached_property
    def unknown_uids(self) -> frozenset[int]:
        """Users whose records are unknown through no fault of theirs (an I/O error)."""
        return frozenset(p.uid for p in self.problems if p.uid is not None and not p.owner_fault)

    def problem_of(self, uid: int) -> StateProblem | None:
        return next((p for p in self.problems if p.uid == uid), None)

    def membership(
        self,
        facts: ProcessFacts,
        environments: Mapping[str, Sequence[Environment]] | Sequence[Environment],
    ) -> tuple[Membership, Environment | None, str]:
        """``resolve`` (the one membership rule) with all this state cannot tell: whose
        records are unusable or unknown, and genv 1.4.3's ids not taken over yet."""
        return resolve(facts, environments, self.unusable_uids, self.unknown_uids, self.legacy_eids)

    # -- environments -----------------------------------------------------------------------

    @cached_property
    def _by_eid(self) -> dict[str, list[Environment]]:
        index: dict[str, list[Environment]] = defaultdict(list)
        for env in self.environments:
            index[env.eid].append(env)
        return index

    def with_eid(self, eid: str) -> list[Environment]:
        return list(self._by_eid.get(eid, ()))

    def lookup(self, eid: str, prefer_uid: int | None = None) -> Environment | None:
        """The environment ``eid`` of ``prefer_uid``; else the only one with that id."""
        matches = self._by_eid.get(eid, [])
        for env in matches:
            if env.uid == prefer_uid:
                return env
        return matches[0] if len(matches) == 1 else None

    def find_by_pid(self, pid: int) -> list[Environment]:
        return [env for env in self.environments if pid in env.pids]

    def find_by_kernel(self, kernel_id: str) -> list[Environment]:
        return [env for env in self.environments if kernel_id in env.kernel_ids]

    # -- attachments ------------------------------------------------------------------------

    @cached_property
    def _by_env(self) -> dict[tuple[int, str], list[Attachment]]:
        grouped: dict[tuple[int, str], list[Attachment]] = defaultdict(list)
        for attachment in self.attachments:
            grouped[attachment.env_key].append(attachment)
        return grouped

    @cached_property
    def _by_device(self) -> dict[int, list[Attachment]]:
        grouped: dict[int, list[Attachment]] = defaultdict(list)
        for attachment in self.attachments:
            grouped[attachment.device_index].append(attachment)
        return grouped

    def attachments_of(self, env: Environment) -> list[Attachment]:
        return list(self._by_env.get(env.key, ()))

    def attached_indices(self, env: Environment) -> list[int]:
        return sorted(a.device_index for a in self._by_env.get(env.key, ()))

    def attachments_on(self, index: int) -> list[Attachment]:
        return list(self._by_device.get(index, ()))

    def held_on(self, index: int) -> list[Attachment]:
        """Everything that may hold device ``index``, for deciding whether it is free, where
        "unknown" must not read as "free": the attachments, and for each user whose file
        cannot be used now, what root last saw them hold there (published by the daemon);
        when root published nothing, a user whose file this reader may not read may hold any
        device (a corrupt file holds nothing, for everyone alike)."""
        held = self.attachments_on(index)
        held += [a for a in self.legacy_held if a.device_index == index]
        for uid in sorted(self.unusable_uids):
            if uid not in self.hidden_uids and not self.holdings_published:
                continue
            if self.holdings_published:
                held += [h for h in self.holdings if h.uid == uid and h.device_index == index]
            else:
                held.append(Attachment(index, UNKNOWN_HOLDER, uid, 0.0))
        return held


# The environment id of a holder that may exist but is unknown (its owner's file is unusable).
UNKNOWN_HOLDER = "?"
