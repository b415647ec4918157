"""What rules conclude: messages, processes to terminate and attachments to detach."""

from __future__ import annotations

from dataclasses import dataclass, field

from genv.domain.observation import ObservedProcess


@dataclass(frozen=True)
class Termination:
    """Terminate ``process`` (the very one: pid and start time) for ``reason``."""

    process: ObservedProcess
    rule: str
    reason: str
    devices: tuple[int, ...]
    chosen: bool = False  # picked among several candidates: the reason is worth printing


@dataclass(frozen=True)
class Detachment:
    eid: str
    uid: int
    username: str
    device_index: int
    rule: str
    reason: str
    chosen: bool = False


@dataclass(frozen=True)
class Finding:
    """One violation: the line that says so, and what should be done about it."""

    rule: str
    message: str
    terminations: tuple[Termination, ...] = ()
    detachments: tuple[Detachment, ...] = ()
    details: dict = field(default_factory=dict, compare=False)
