"""``genv lock``: exclusive use of the devices an environment shares with others."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from genv.core.environments import lookup
from genv.domain.models import Environment
from genv.domain.state import State
from genv.store import Store, device_locks
from genv.system import procfs


def shared_devices(state: State, env: Environment) -> list[int]:
    """The devices of ``env`` that it shares: attached with over-subscription, or held by
    another environment too."""
    indices = set()
    for attachment in state.attachments_of(env):
        others = [a for a in state.attachments_on(attachment.device_index) if a.env_key != env.key]
        if attachment.over_subscribed or others:
            indices.add(attachment.device_index)
    return sorted(indices)


def _members_of_device(state: State) -> Callable[[int, int], bool]:
    """Whether a lock holder is a process of a user with an environment on that device."""

    def may_wait_for(index: int, pid: int) -> bool:
        uid = procfs.real_uid(pid)
        return uid is not None and any(a.uid == uid for a in state.attachments_on(index))

    return may_wait_for


@contextmanager
def hold(
    store: Store,
    eid: str,
    on_wait: Callable[[int], None] | None = None,
    on_skip: Callable[[int, list[int]], None] | None = None,
) -> Iterator[list[int]]:
    """Hold ``eid``'s shared devices for the block; yields the indices locked."""
    state = store.read()
    env = lookup(state, eid, store.caller_uid)
    with device_locks.hold(
        store.root, shared_devices(state, env), _members_of_device(state), on_wait, on_skip
    ) as indices:
        yield indices
