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
this API or a shell activated it. Every error a user can cause raises ``GenvError`` (or a
subclass of it), with a one-line message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from genv.core import devices, environments, project, session
from genv.domain.models import EnvConfig
from genv.errors import GenvError
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
        raise session.SessionError(f"already running in environment {current}")
    pid = os.getpid()
    eid = eid or str(pid)
    changes: dict[str, object] = {}
    if name is not None:
        changes["name"] = session.check_value("name", name)
    if gpus is not None:
        changes["gpus"] = session.check_value("gpus", gpus)
    if gpu_memory is not None:
        changes["gpu_memory"] = session.check_value("gpu-memory", gpu_memory)
    saved_config = None
    if load:
        home = project.find_home()
        saved_config = project.read_project(home) if home is not None else None
    with _store() as store:
        view = environments.enter(store, eid, pid, changes, saved_config, attach, over_subscribe)
    saved = {name: os.environ.get(name) for name in session.VARIABLES}
    _set(session.variables(eid, view.indices, view.env.config))
    try:
        yield eid
    finally:
        _set(saved)
        with _store() as store:
            environments.unregister(store, pid=pid)


def configuration() -> EnvConfig:
    """The configuration of the active environment."""
    with _store() as store:
        return environments.find(store, session.require_eid()).env.config


def configure(
    name: object = UNCHANGED,
    gpus: object = UNCHANGED,
    gpu_memory: object = UNCHANGED,
) -> EnvConfig:
    """Change the active environment's configuration; None clears a field.

    Devices are not attached or detached here: call ``attach()`` to follow a new ``gpus``.
    """
    changes: dict[str, object] = {}
    for field, value in (("name", name), ("gpus", gpus), ("gpu-memory", gpu_memory)):
        if value is not UNCHANGED:
            changes[session.field_key(field)] = (
                None if value is None else session.check_value(field, value)
            )
    current = session.require_eid()
    with _store() as store:
        if changes:
            environments.configure(store, current, **changes)
        _refresh(store, current)
        return environments.find(store, current).env.config


def attached() -> list[int]:
    """The indices of the devices attached to the active environment."""
    with _store() as store:
        return environments.find(store, session.require_eid()).indices


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
        devices.attach(store, current, count, index, over_subscribe)
        return _refresh(store, current)


def detach(index: int | None = None) -> list[int]:
    """Detach device ``index`` (every device when None); returns the indices still attached."""
    current = session.require_eid()
    with _store() as store:
        devices.detach(store, current, index)
        return _refresh(store, current)


@contextmanager
def lock() -> Iterator[list[int]]:
    """Hold the active environment's over-subscribed devices exclusively during the block.

    Waits while another environment holds any of them; yields the indices locked.
    """
    from genv.core import lock as locks

    current = session.require_eid()
    with _store() as store, locks.hold(store, current) as indices:
        yield indices


def _refresh(store: Store, current: str) -> list[int]:
    """Bring this process's variables in line with the store; the attached indices."""
    view = environments.find(store, current)
    values = session.variables(current, view.indices, view.env.config)
    values.pop(session.ENVIRONMENT_ID)
    _set(values)
    return view.indices


def _set(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
