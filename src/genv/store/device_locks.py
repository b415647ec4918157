"""Per-device locks, so environments sharing an over-subscribed device can take turns.

One empty file per device index in the state folder, ``device-<index>.lock``, flocked
exclusively by ``genv lock`` (and the Python API) around a command. Locks are always taken in
increasing index order, so two environments sharing several devices never deadlock. A flock
is released by the kernel when its holder dies, so a crash leaves no stale lock. The files are
opened relative to the state folder's descriptor without following links (see safefs).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from genv.domain.models import Environment
from genv.store import safefs
from genv.store.state import State
from genv.store.store import Store


def lock_name(index: int) -> str:
    return f"device-{index}.lock"


def over_subscribed(state: State, env: Environment) -> list[int]:
    """The devices of ``env`` that it shares: attached with over-subscription, or held by
    another environment too."""
    indices = set()
    for attachment in state.attachments_of(env):
        others = [
            a for a in state.attachments_on(attachment.device_index)
            if (a.eid, a.uid) != (env.eid, env.uid)
        ]
        if attachment.over_subscribed or others:
            indices.add(attachment.device_index)
    return sorted(indices)


@contextmanager
def hold(
    store: Store,
    indices: Iterable[int],
    on_wait: Callable[[int], None] | None = None,
) -> Iterator[list[int]]:
    """Hold the locks of ``indices`` (in increasing order) for the duration of the block.

    ``on_wait(index)`` is called once before blocking on a lock someone else holds, so the
    user learns why nothing happens. Yields the indices locked.
    """
    order = sorted(set(indices))
    descriptors: list[int] = []
    if not order:
        yield order
        return
    dir_fd = safefs.ensure_state_dir(store.root)  # checked like the store's own folder
    try:
        for index in order:
            fd = safefs.open_lock_file(dir_fd, lock_name(index))
            descriptors.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait(index)
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield order
    finally:
        for fd in reversed(descriptors):
            os.close(fd)
        os.close(dir_fd)
