"""genv's Python API, for programs and integrations that manage their own environment.

    from genv import sdk

    with sdk.activate(gpus=1, gpu_memory="4g"):
        print(sdk.attached())        # [0]; CUDA_VISIBLE_DEVICES is set to match
        with sdk.lock():             # exclusive use of the devices it shares with others
            train()

Activation registers this process (``os.getpid()``) in an environment and sets the same
variables a shell gets (``GENV_ENVIRONMENT_ID``, ``CUDA_VISIBLE_DEVICES``, ``GENV_GPUS``...), so
child processes belong to it too. CUDA reads ``CUDA_VISIBLE_DEVICES`` once, when it starts:
attach before the first CUDA call. The other functions act on the active environment, whether
this API or a shell activated it. User errors raise ``genv.store.StoreError`` (``GenvError``
below) or one of the allocation/memory errors, each with a one-line message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from genv.domain.models import EnvConfig
from genv.shell import session
from genv.shell.session import ShellError as GenvError
from genv.store import Store

__all__ = [
    "GenvError",
    "activate",
    "active",
    "attach",
    "attached",
    "configuration",
    "configure",
    "detach",
    "eid",
    "lock",
]

UNCHANGED = object()


def active() -> bool:
    """Whether this process runs in an environment."""
    return session.current_eid() is not None


def eid() -> str | None:
    """The id of the environment this process runs in, or None."""
    return session.current_eid()


@contextmanager
def _store() -> Iterator[Store]:
    store = Store()
    try:
        yield store
    finally:
        store.close()


@contextmanager
def activate(
    eid: str | None = None,
    name: str | None = None,
    gpus: int | None = None,
    gpu_memory: str | None = None,
    attach: bool = True,
    over_subscribe: bool = False,
    load: bool = False,
) -> Iterator[str]:
    """Run the block in an environment: ``eid`` (joined or created) or a new one.

    Registers this process, configures what is given, attaches ``gpus`` devices (unless
    ``attach`` is false), sets the variables; on leaving, puts every variable back as it was
    and unregisters the process, which ends the environment if nothing else is in it.
    ``load`` starts a new environment from the project's saved configuration (.genv/).
    Yields the environment id.
    """
    current = session.current_eid()
    if current is not None:
        raise GenvError(f"already running in environment {current}")
    pid = os.getpid()
    eid = eid or str(pid)
    changes: dict[str, str | int | None] = {}
    if name is not None:
        changes["name"] = session.check_value("name", name)
    if gpus is not None:
        changes["gpus"] = session.check_value("gpus", str(gpus))
    if gpu_memory is not None:
        changes["gpu_memory"] = session.check_value("gpu-memory", gpu_memory)
    project = None
    if load:
        home = session.find_home()
        project = session.read_project(home) if home is not None else None
    with _store() as store:
        env, indices = session.activate(store, eid, pid, changes, project, attach,
                                        over_subscribe)
    saved = {name: os.environ.get(name) for name in session.VARIABLES}
    _set(session.variables(eid, indices, env.config))
    try:
        yield eid
    finally:
        _set(saved)
        with _store() as store, store.transaction() as tx:
            tx.deactivate(pid=pid)


def configuration() -> EnvConfig:
    """The configuration of the active environment."""
    with _store() as store:
        env, _ = session.environment(store, session.require_eid())
    return env.config


def configure(
    name: object = UNCHANGED,
    gpus: object = UNCHANGED,
    gpu_memory: object = UNCHANGED,
) -> EnvConfig:
    """Change the active environment's configuration; None clears a field.

    Devices are not attached or detached here: call ``attach()`` to follow a new ``gpus``.
    """
    changes: dict[str, str | int | None] = {}
    for field, value in (("name", name), ("gpus", gpus), ("gpu-memory", gpu_memory)):
        if value is not UNCHANGED:
            changes[session.field_key(field)] = (
                None if value is None else session.check_value(field, str(value))
            )
    current = session.require_eid()
    with _store() as store:
        if changes:
            with store.transaction() as tx:
                tx.configure(current, **changes)
        _refresh(store, current)
        env, _ = session.environment(store, current)
    return env.config


def attached() -> list[int]:
    """The indices of the devices attached to the active environment."""
    with _store() as store:
        return session.environment(store, session.require_eid())[1]


def attach(
    count: int | None = None,
    index: int | None = None,
    over_subscribe: bool = False,
) -> list[int]:
    """Attach ``count`` devices in all, or device ``index``, or as many as configured.

    Returns the indices now attached and updates ``CUDA_VISIBLE_DEVICES``.
    """
    current = session.require_eid()
    with _store() as store:
        session.attach_devices(store, current, count, index, over_subscribe)
        return _refresh(store, current)


def detach(index: int | None = None) -> list[int]:
    """Detach device ``index`` (every device when None); returns the indices still attached."""
    from genv.core import devices

    current = session.require_eid()
    with _store() as store:
        devices.detach(store, current, index)
        return _refresh(store, current)


@contextmanager
def lock() -> Iterator[list[int]]:
    """Hold the active environment's over-subscribed devices exclusively during the block.

    Waits while another environment holds any of them; yields the indices locked.
    """
    from genv.store import device_locks

    current = session.require_eid()
    with _store() as store:
        state = store.read()
        env = state.environment(current, prefer_uid=store.caller_uid)
        if env is None:
            raise GenvError(f"environment {current} no longer exists")
        with device_locks.hold(store, device_locks.over_subscribed(state, env)) as indices:
            yield indices


def _refresh(store: Store, current: str) -> list[int]:
    """Bring this process's variables in line with the store; the attached indices."""
    env, indices = session.environment(store, current)
    values = session.variables(current, indices, env.config)
    values.pop(session.ENVIRONMENT_ID)
    _set(values)
    return indices


def _set(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
