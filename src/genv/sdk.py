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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genv.core import devices, environments, project, session
from genv.domain.models import EnvConfig
from genv.errors import GenvError
from genv.store import Store

__all__ = [
    "Env",
    "GenvError",
    "activate",
    "active",
    "attach",
    "attached",
    "configuration",
    "configure",
    "detach",
    "eid",
    "home",
    "load_configuration",
    "lock",
    "refresh_attached",
    "refresh_configuration",
    "save_configuration",
]

UNCHANGED: Any = object()


@dataclass
class Env:
    """An environment as genv 1.4.3's API described it (``genv.sdk.Env``)."""

    @dataclass
    class Config:
        """A configuration; ``None`` means not set. Kept in ``.genv/`` one file per field."""

        name: str | None = None
        gpu_memory: str | None = None
        gpus: int | None = None

        def load(self, path: str | os.PathLike[str]) -> None:
            """Read the fields saved in folder ``path`` (a missing file clears its field)."""
            settings = project.read_project(Path(path))
            self.name = settings.get("name")  # type: ignore[assignment]
            self.gpu_memory = settings.get("gpu_memory")  # type: ignore[assignment]
            self.gpus = settings.get("gpus")  # type: ignore[assignment]

        def save(self, path: str | os.PathLike[str]) -> None:
            """Write the fields into folder ``path`` (a field that is not set loses its file)."""
            project.write_project(Path(path), self.frozen())

        def frozen(self) -> EnvConfig:
            return EnvConfig(name=self.name, gpus=self.gpus, gpu_memory=self.gpu_memory)

        @classmethod
        def of(cls, config: EnvConfig) -> Env.Config:
            return cls(name=config.name, gpu_memory=config.gpu_memory, gpus=config.gpus)

    eid: str
    uid: int
    creation: str
    username: str | None
    config: Env.Config
    pids: list[int] = field(default_factory=list)
    kernel_ids: list[str] = field(default_factory=list)

    @property
    def time_since(self) -> str:
        from datetime import datetime

        from genv.domain.timefmt import TIMESTAMP_FORMAT, time_since

        return time_since(datetime.strptime(self.creation, TIMESTAMP_FORMAT).timestamp())

    @property
    def active(self) -> bool:
        return bool(self.pids) or bool(self.kernel_ids)


def home() -> Path | None:
    """The project folder (``.genv``) of this environment: the nearest one in the current
    folder or above it, else ``~/.genv``; None when there is none."""
    return project.find_home()


def active() -> bool:
    """Whether this process runs in an environment."""
    return session.current_eid() is not None


def eid() -> str | None:
    """The id of the environment this process runs in, or None."""
    return session.current_eid()


@contextmanager
def activate(
    eid: str | None = None,
    name: str | None = None,
    gpus: int | None = None,
    gpu_memory: str | None = None,
    attach: bool = True,
    over_subscribe: bool = False,
    load: bool = False,
    config: Env.Config | EnvConfig | None = None,
) -> Iterator[str]:
    """Run the block in an environment: ``eid`` (joined or created) or a new one.

    Registers this process, configures what is given, attaches ``gpus`` devices (unless
    ``attach`` is false), sets the variables; on leaving, puts every variable back as it was
    and unregisters the process, which ends the environment if nothing else is in it.
    ``load`` starts a new environment from the project's saved configuration (.genv/).
    ``config`` (genv 1.4.3's way) gives the whole configuration at once. Yields the
    environment id.
    """
    current = session.current_eid()
    if current is not None:
        raise session.SessionError(f"already running in environment {current}")
    if config is not None:
        name = config.name if name is None else name
        gpus = config.gpus if gpus is None else gpus
        gpu_memory = config.gpu_memory if gpu_memory is None else gpu_memory
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
    with Store() as store:
        view = environments.enter(store, eid, pid, changes, saved_config, attach, over_subscribe)
    saved = {name: os.environ.get(name) for name in session.VARIABLES}
    session.apply(session.variables(eid, view.indices, view.env.config))
    try:
        yield eid
    finally:
        session.apply(saved)
        with Store() as store:
            environments.unregister(store, pid=pid)


def configuration() -> Env.Config:
    """The configuration of the active environment."""
    with Store() as store:
        return Env.Config.of(environments.find(store, session.require_eid()).env.config)


def refresh_configuration() -> Env.Config:
    """The active environment's configuration as stored, with this process's variables
    (``GENV_GPUS``, ``GENV_GPU_MEMORY``, ``GENV_ENVIRONMENT_NAME``) brought in line."""
    current = session.require_eid()
    with Store() as store:
        _refresh(store, current)
        return Env.Config.of(environments.find(store, current).env.config)


def load_configuration() -> Env.Config:
    """The configuration saved in the project folder (``home()``; empty without one), with
    this process's variables set to it. The environment is not changed: pass it to
    ``configure()`` for that (as ``genv config --load`` does)."""
    session.require_eid()
    config = Env.Config()
    folder = home()
    if folder is not None:
        config.load(folder)
    session.apply(_config_variables(config.frozen()))
    return config


def save_configuration() -> None:
    """Save the active environment's configuration in the project folder, when there is one
    (as genv 1.4.3 did; ``genv config --save`` makes one)."""
    folder = home()
    if folder is not None:
        configuration().save(folder)


def configure(
    config: Env.Config | EnvConfig | None = None,
    /,
    name: object = UNCHANGED,
    gpus: object = UNCHANGED,
    gpu_memory: object = UNCHANGED,
) -> Env.Config:
    """Change the active environment's configuration; None clears a field.

    ``config`` (genv 1.4.3's way) replaces the whole configuration: its fields that are None
    are cleared. Devices are not attached or detached here: call ``attach()`` to follow a
    new ``gpus``.
    """
    if config is not None:
        name = config.name if name is UNCHANGED else name
        gpus = config.gpus if gpus is UNCHANGED else gpus
        gpu_memory = config.gpu_memory if gpu_memory is UNCHANGED else gpu_memory
    changes: dict[str, object] = {}
    for field_, value in (("name", name), ("gpus", gpus), ("gpu-memory", gpu_memory)):
        if value is not UNCHANGED:
            changes[session.field_key(field_)] = (
                None if value is None else session.check_value(field_, value)
            )
    current = session.require_eid()
    with Store() as store:
        if changes:
            environments.configure(store, current, **changes)
        _refresh(store, current)
        return Env.Config.of(environments.find(store, current).env.config)


def attached() -> list[int]:
    """The indices of the devices attached to the active environment."""
    with Store() as store:
        return environments.find(store, session.require_eid()).indices


def attach(
    count: int | None = None,
    index: int | None = None,
    over_subscribe: bool = False,
    *,
    gpus: int | None = None,
    allow_over_subscription: bool = False,
) -> list[int]:
    """Attach ``count`` devices in all, or device ``index``, or as many as configured.

    ``gpus`` and ``allow_over_subscription`` are genv 1.4.3's names of ``count`` and
    ``over_subscribe``. Returns the indices now attached and updates ``CUDA_VISIBLE_DEVICES``.
    """
    count = gpus if count is None else count
    over_subscribe = over_subscribe or allow_over_subscription
    if count is not None and index is not None:
        raise GenvError("give either a device count or an index, not both")
    current = session.require_eid()
    with Store() as store:
        devices.attach(store, current, count, index, over_subscribe)
        return _refresh(store, current)


def detach(index: int | None = None) -> list[int]:
    """Detach device ``index`` (every device when None); returns the indices still attached."""
    current = session.require_eid()
    with Store() as store:
        devices.detach(store, current, index)
        return _refresh(store, current)


def refresh_attached() -> list[int]:
    """The devices attached to the active environment as stored, with this process's
    ``CUDA_VISIBLE_DEVICES`` brought in line."""
    current = session.require_eid()
    with Store() as store:
        return _refresh(store, current)


@contextmanager
def lock() -> Iterator[list[int]]:
    """Hold the active environment's over-subscribed devices exclusively during the block.

    Waits while another environment holds any of them; yields the indices locked. Outside an
    environment it holds nothing (as in genv 1.4.3) and yields ``[]``.
    """
    from genv.core import lock as locks

    current = session.current_eid()
    if current is None:
        yield []
        return
    with Store() as store, locks.hold(store, current) as indices:
        yield indices


def _refresh(store: Store, current: str) -> list[int]:
    """Bring this process's variables in line with the store; the attached indices."""
    view = environments.find(store, current)
    values = session.variables(current, view.indices, view.env.config)
    values.pop(session.ENVIRONMENT_ID)
    session.apply(values)
    return view.indices


def _config_variables(config: EnvConfig) -> dict[str, str | None]:
    values = session.variables("", [], config)
    return {k: v for k, v in values.items() if k in session.VARIABLES[2:]}
