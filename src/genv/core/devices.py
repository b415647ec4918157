"""Attaching and detaching devices, so that no device is ever given twice.

Each user writes only their own file, under their own lock, so there is no lock that all
users share (and that one user could hold forever). Instead an attach writes its claim, then
reads every other user's file again: a device that someone else claimed meanwhile is given
back and another one tried. Of two users who claim one device at the same moment, at least
the one whose check comes last sees the other's claim, so they never both keep it (both may
give it back, and then try again after a short random pause).
"""

from __future__ import annotations

import time

from genv.core.environments import lookup
from genv.domain import allocation
from genv.domain.models import Attachment
from genv.store import NotFound

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from collections.abc import Sequence

    from genv.backends.base import GpuBackend
    from genv.domain.models import Device, Environment
    from genv.domain.state import State
    from genv.store import Store

ATTEMPTS = 20


def _devices(backend: GpuBackend | None, backend_name: str | None) -> list[Device]:
    """The devices as the hardware reports them now; read before any lock is taken, since
    reading hardware can be slow and must not hold anyone up."""
    if backend is None:
        from genv.backends import open_backend

        backend = open_backend(backend_name)
    return list(backend.snapshot(processes=False).devices)


def _occupants_of(state: State, env: Environment, devices: Sequence[Device]) -> list[Attachment]:
    seen: list[Attachment] = []
    for device in devices:
        seen += [a for a in state.held_on(device.index) if a.env_key != env.key]
    return seen


def _choose(
    devices: list[Device],
    others: list[Attachment],
    mine: set[int],
    env: Environment,
    count: int | None,
    index: int | None,
    over_subscribe: bool,
) -> list[int]:
    if index is not None:
        allocation.check_index(devices, others, mine, index, env.config.gpu_memory, over_subscribe)
        return sorted(mine | {index})
    wanted = env.config.gpus if count is None else count
    return allocation.choose_by_count(
        devices,
        others,
        mine,
        len(mine) if wanted is None else wanted,
        env.config.gpu_memory,
        over_subscribe,
    )


def _unknown_holders(state: State) -> str:
    """Why devices may look taken: users whose file this caller cannot read."""
    if state.holdings_published or not state.hidden_uids:
        return ""
    problem = state.problem_of(min(state.hidden_uids))
    shown = problem.path if problem is not None else "a state file"
    return (
        f" ({shown} cannot be read here, so the devices its owner may hold are not given "
        "out until root's genv enforce says which they are)"
    )


def attach(
    store: Store,
    eid: str,
    count: int | None = None,
    index: int | None = None,
    over_subscribe: bool = False,
    backend: GpuBackend | None = None,
    backend_name: str | None = None,
) -> list[int]:
    """Attach by count (the total wanted) or by index; the indices attached afterwards."""
    devices = _devices(backend, backend_name)
    by_index = {device.index: device for device in devices}
    env = lookup(store.read(), eid, store.caller_uid)
    for attempt in range(ATTEMPTS):
        with store.transaction(uid=env.uid) as tx:
            env = tx.environment(env.eid)
            others = _occupants_of(tx.view(), env, devices)
            mine = set(tx.attached(env.eid))
            try:
                chosen = _choose(devices, others, mine, env, count, index, over_subscribe)
            except allocation.AllocationError as error:
                raise allocation.AllocationError(f"{error}{_unknown_holders(tx.view())}") from None
            for extra in sorted(mine - set(chosen)):
                tx.detach(env.eid, extra)
            new = [i for i in chosen if i not in mine]
            exclusive = []
            for i in new:
                occupants = [a for a in others if a.device_index == i]
                shared = not allocation.is_available(by_index[i], occupants, env.config.gpu_memory)
                tx.attach(env.eid, i, over_subscribed=shared, uuid=by_index[i].uuid)
                if not shared:
                    exclusive.append(i)
            tx.save()
            if not exclusive:
                return tx.attached(env.eid)
            # Check again, now that the claim is visible to everyone.
            fresh = store.read()
            lost = [
                i
                for i in exclusive
                if not allocation.is_available(
                    by_index[i],
                    [a for a in fresh.held_on(i) if a.env_key != env.key],
                    env.config.gpu_memory,
                )
            ]
            if not lost:
                return tx.attached(env.eid)
            for i in lost:
                tx.detach(env.eid, i)
            tx.save()
            if index is not None:
                raise allocation.AllocationError(f"Device {index} is not available")
        import random  # only when someone else claimed the same device meanwhile

        time.sleep(random.uniform(0.005, 0.02) * (attempt + 1))
    raise allocation.AllocationError(
        "other environments kept taking the same devices at the same moment; try again"
    )


def detach(store: Store, eid: str, index: int | None = None) -> list[int]:
    """Detach from one device or all; the indices still attached.

    Detaching an environment that has ended (or never was) leaves nothing attached, as in
    genv 1.4.3: integrations call it while cleaning up and must not see an error. Root takes
    another user's devices back by revoking them in its own file.
    """
    state = store.read()
    try:
        env = lookup(state, eid, store.caller_uid)
    except NotFound:
        return []
    if env.uid != store.caller_uid and store.caller_uid == 0:
        taken = [a for a in state.attachments_of(env) if index is None or a.device_index == index]
        if taken:
            with store.transaction() as tx:
                tx.revoke(attachments=taken)
        return sorted(a.device_index for a in state.attachments_of(env) if a not in taken)
    with store.transaction(uid=env.uid) as tx:
        tx.detach(env.eid, index)
        return tx.attached(env.eid)


def attached(store: Store, eid: str) -> list[int]:
    state = store.read()
    env = state.lookup(eid, prefer_uid=store.caller_uid)
    return [] if env is None else state.attached_indices(env)


def reset(store: Store) -> None:
    """Detach every environment the caller may change (everyone's, as root)."""
    state = store.read()
    with store.transaction() as tx:
        for env in state.environments:
            if env.uid == store.caller_uid and tx.has(env.eid):
                tx.detach(env.eid)
        if store.caller_uid == 0:
            others = [a for a in state.attachments if a.uid != 0]
            if others:
                tx.revoke(attachments=others)
