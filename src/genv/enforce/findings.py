"""What rules conclude: messages, processes to terminate and attachments to detach."""

from __future__ import annotations

from genv.domain.observation import ObservedProcess
from genv.domain.values import field, value


@value
class Termination:
    """Terminate ``process`` (the very one: pid and start time) for ``reason``."""

    process: ObservedProcess
    rule: str
    reason: str
    devices: tuple[int, ...]
    chosen: bool = False  # picked among several candidates: the reason is worth printing


@value
class Detachment:
    eid: str
    uid: int
    username: str
    device_index: int
    rule: str
    reason: str
    chosen: bool = False


@value
class Finding:
    """One violation: the line that says so, and what should be done about it."""

    rule: str
    message: str
    terminations: tuple[Termination, ...] = ()
    detachments: tuple[Detachment, ...] = ()
    details: dict = field(default_factory=dict, compare=False)
