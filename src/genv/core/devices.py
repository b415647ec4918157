"""Attaching and detaching devices: the store's transaction plus the hardware's device list."""

from __future__ import annotations

from collections.abc import Sequence

from genv.backends.base import GpuBackend
from genv.domain import allocation
from genv.domain.models import Device, Environment
from genv.store import NotFound, State, Store, Transaction


def attach(
    store: Store,
    backend: GpuBackend,
    eid: str,
    count: int | None = None,
    index: int | None = None,
    allow_over_subscription: bool = False,
) -> list[int]:
    """Attach by count (total wanted) or by index; returns the indices now attached.

    The device list is read before the lock is taken: reading hardware can be slow and must
    not hold everyone else up.
    """
    devices = backend.snapshot(processes=False).devices
    uuids = {device.index: device.uuid for device in devices}
    with store.transaction() as tx:
        env = tx.environment(eid)
        tx.check_may_change(env)  # before anything else: another user's env is refused as such
        view = tx.view()
        mine = {a.device_index for a in view.attachments_of(env)}
        if index is not None:
            allocation.check_index(
                devices, view.attachments, mine, index, env.config.gpu_memory,
                allow_over_subscription,
            )
            _attach_marking_shared(tx, env, devices, view, [index], uuids)
        else:
            wanted = env.config.gpus if count is None else count
            if wanted is None:
                wanted = len(mine)
            chosen = allocation.choose_by_count(
                devices, view.attachments, mine, wanted, env.config.gpu_memory,
                allow_over_subscription,
            )
            for extra in sorted(mine - set(chosen)):
                tx.detach(eid, extra, uid=env.uid)
            new = [i for i in chosen if i not in mine]
            _attach_marking_shared(tx, env, devices, view, new, uuids)
        return sorted(a.device_index for a in tx.view().attachments_of(env))


def _attach_marking_shared(
    tx: Transaction,
    env: Environment,
    devices: Sequence[Device],
    view: State,
    indices: list[int],
    uuids: dict[int, str],
) -> None:
    """Attach ``indices``; an attachment is marked over-subscribed only when it really is."""
    by_index = {device.index: device for device in devices}
    for index in indices:
        device = by_index.get(index)
        others = [a for a in view.attachments_on(index) if (a.eid, a.uid) != (env.eid, env.uid)]
        shared = device is not None and not allocation.is_available(
            device, others, env.config.gpu_memory
        )
        tx.attach(env.eid, [index], shared, uuids)


def detach(store: Store, eid: str, index: int | None = None) -> list[int]:
    """Detach from one device or all; returns the indices still attached.

    Detaching an environment that has ended (or never was) leaves nothing attached, as in
    genv 1.4.3: integrations call it while cleaning up and must not see an error.
    """
    with store.transaction() as tx:
        try:
            env = tx.environment(eid)
        except NotFound:
            return []
        tx.detach(eid, index, uid=env.uid)
        return sorted(a.device_index for a in tx.view().attachments_of(env))


def attached(store: Store, eid: str) -> list[int]:
    state = store.read()
    env = state.environment(eid, prefer_uid=store.caller_uid)
    return [] if env is None else sorted(a.device_index for a in state.attachments_of(env))
