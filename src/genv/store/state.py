"""A consistent, read-only view of every user's environments and attachments."""

from __future__ import annotations

from dataclasses import dataclass, field

from genv.domain.models import Attachment, Environment


@dataclass(frozen=True)
class StateProblem:
    """A state file that could not be used; the records of ``uid`` are unknown, not absent."""

    path: str
    uid: int | None
    message: str

    def line(self) -> str:
        return f"state file {self.path} {self.message}"


@dataclass(frozen=True)
class State:
    environments: tuple[Environment, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    problems: tuple[StateProblem, ...] = ()
    unreadable_uids: frozenset[int] = field(default_factory=frozenset)

    def with_eid(self, eid: str) -> list[Environment]:
        return [env for env in self.environments if env.eid == eid]

    def environment(self, eid: str, prefer_uid: int | None = None) -> Environment | None:
        """The environment ``eid``; the one of ``prefer_uid`` when two users claim the same id."""
        matches = self.with_eid(eid)
        if prefer_uid is not None:
            for env in matches:
                if env.uid == prefer_uid:
                    return env
        return matches[0] if len(matches) == 1 else None

    def attachments_of(self, env: Environment) -> list[Attachment]:
        return [a for a in self.attachments if a.eid == env.eid and a.uid == env.uid]

    def attachments_on(self, index: int) -> list[Attachment]:
        return [a for a in self.attachments if a.device_index == index]

    def environment_of(self, attachment: Attachment) -> Environment | None:
        for env in self.environments:
            if env.eid == attachment.eid and env.uid == attachment.uid:
                return env
        return None

    def find_by_pid(self, pid: int) -> list[Environment]:
        return [env for env in self.environments if pid in env.pids]

    def find_by_kernel(self, kernel_id: str) -> list[Environment]:
        return [env for env in self.environments if kernel_id in env.kernel_ids]
