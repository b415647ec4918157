"""What ``genv top`` shows, and in which order: pure, so tests check it without a terminal."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from genv.domain.observation import Membership
from genv.metrics.usage import (
    EnvironmentUsage,
    HostUsage,
    ProcessUsage,
    UserUsage,
    user_label,
)

SORT_KEYS = ("user", "memory", "devices", "processes")


@dataclass(frozen=True)
class ViewOptions:
    sort: str = "user"
    user: str | None = None  # show only this user

    def next_sort(self) -> ViewOptions:
        return replace(self, sort=SORT_KEYS[(SORT_KEYS.index(self.sort) + 1) % len(SORT_KEYS)])


@dataclass(frozen=True)
class EnvRow:
    env: EnvironmentUsage
    processes: tuple[ProcessUsage, ...]


@dataclass(frozen=True)
class UserRow:
    user: UserUsage
    environments: tuple[EnvRow, ...]
    # GPU processes of the user outside their environments (no env, another's, unknown)
    outside: tuple[ProcessUsage, ...] = field(default=())


def user_rows(usage: HostUsage, options: ViewOptions) -> list[UserRow]:
    """Users with their environments and processes, filtered and sorted as asked."""
    processes = {p.pid: p for p in usage.processes}
    rows = []
    for user in usage.users:
        if options.user is not None and user.username != options.user:
            continue
        envs = [
            EnvRow(env, tuple(processes[pid] for pid in env.processes if pid in processes))
            for env in usage.environments
            if env.uid == user.uid
        ]
        envs.sort(key=_env_key(options.sort))
        mine = {pid for row in envs for pid in (p.pid for p in row.processes)}
        outside = tuple(p for p in usage.processes if p.uid == user.uid and p.pid not in mine)
        rows.append(UserRow(user, tuple(envs), outside))
    rows.sort(key=_user_key(options.sort))
    return rows


def unowned(usage: HostUsage) -> list[ProcessUsage]:
    """GPU processes whose owner could not be read at all."""
    return [p for p in usage.processes if p.uid is None]


def _user_key(sort: str):  # noqa: ANN202
    if sort == "memory":
        return lambda row: (-row.user.memory_used, row.user.username)
    if sort == "devices":
        return lambda row: (-row.user.attached_devices, -row.user.devices_in_use, row.user.username)
    if sort == "processes":
        return lambda row: (-row.user.processes, row.user.username)
    return lambda row: row.user.username


def _env_key(sort: str):  # noqa: ANN202
    if sort == "memory":
        return lambda row: (-row.env.used_memory, row.env.creation)
    if sort == "devices":
        return lambda row: (-len(row.env.devices), row.env.creation)
    if sort == "processes":
        return lambda row: (-len(row.processes), row.env.creation)
    return lambda row: row.env.creation


def where(process: ProcessUsage) -> str:
    """Why a process shows outside its user's environments, in a few words."""
    if process.membership is Membership.UNKNOWN:
        return "env unknown"
    if process.membership is Membership.IMPOSTOR:
        return "claims another's env"
    if process.membership is Membership.IN_ENV:
        return f"in {process.eid}"
    return "no env"


def owner(process: ProcessUsage) -> str:
    return user_label(process.uid, process.username)
