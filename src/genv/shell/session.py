"""What an active environment is to a process, shared by the shell commands and the Python API.

An environment is active in a process when ``GENV_ENVIRONMENT_ID`` is set in it; the other
variables below tell programs (and CUDA) what the environment holds. The steps here (register,
configure, attach, the project's saved configuration) are the same whether a shell or a Python
program activates, so both behave alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from genv.domain.memory import parse_memory
from genv.domain.models import EnvConfig, Environment
from genv.store import Store
from genv.store.errors import StoreError

# The same name as genv.system.processes.ENVIRONMENT_VARIABLE, spelled here because this module
# is on activation's fast path and that one imports psutil.
ENVIRONMENT_ID = "GENV_ENVIRONMENT_ID"
CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
ENVIRONMENT_NAME = "GENV_ENVIRONMENT_NAME"
GPUS = "GENV_GPUS"
GPU_MEMORY = "GENV_GPU_MEMORY"
BYPASS = "GENV_BYPASS"
# Everything activation sets besides PATH and the prompt, in the order it is exported.
VARIABLES = (ENVIRONMENT_ID, CUDA_VISIBLE_DEVICES, ENVIRONMENT_NAME, GPUS, GPU_MEMORY)

PROJECT_DIR = ".genv"
# Field name on the command line and file name in .genv/ (genv 1.4.3 uses the same files).
CONFIG_FIELDS = ("name", "gpus", "gpu-memory")
NO_DEVICES = "-1"  # CUDA_VISIBLE_DEVICES that hides every device


class ShellError(StoreError):
    """A user error of the environment commands; a StoreError so it prints as one line."""


def shims_dir() -> str:
    """The folder activation puts first on PATH; it holds the ``nvidia-smi`` shim."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "shims")


def current_eid(environ: Mapping[str, str] | None = None) -> str | None:
    value = (os.environ if environ is None else environ).get(ENVIRONMENT_ID, "")
    return value or None


def require_eid() -> str:
    eid = current_eid()
    if eid is None:
        raise ShellError("not running in an active environment; start one with: genv activate")
    return eid


def devices_value(indices: Sequence[int]) -> str:
    return ",".join(str(index) for index in sorted(indices)) or NO_DEVICES


def variables(eid: str, indices: Sequence[int], config: EnvConfig) -> dict[str, str | None]:
    """The variables of an active environment; None means the variable is unset."""
    return {
        ENVIRONMENT_ID: eid,
        CUDA_VISIBLE_DEVICES: devices_value(indices),
        ENVIRONMENT_NAME: config.name,
        GPUS: None if config.gpus is None else str(config.gpus),
        GPU_MEMORY: config.gpu_memory,
    }


# -- configuration values ------------------------------------------------------------------


def field_key(field: str) -> str:
    """``gpu-memory`` (command line, file name) -> ``gpu_memory`` (EnvConfig, Transaction)."""
    return field.replace("-", "_")


def check_value(field: str, value: str) -> str | int:
    """The value of ``field`` as the store keeps it; ShellError when it makes no sense."""
    if field == "gpus":
        try:
            count = int(value.strip())
        except ValueError:
            raise ShellError(f"invalid device count {value!r}: use a whole number") from None
        if count < 0:
            raise ShellError("the device count cannot be negative")
        return count
    if field == "gpu-memory":
        parse_memory(value)
        return value.strip()
    if field == "name" and not value.strip():
        raise ShellError("the environment name cannot be empty; use --clear to remove it")
    return value


def config_lines(config: EnvConfig) -> list[str]:
    """``field: value`` for each field that is set, as ``genv config`` prints them."""
    values = {"gpu-memory": config.gpu_memory, "gpus": config.gpus, "name": config.name}
    return [f"{field}: {value}" for field, value in sorted(values.items()) if value is not None]


# -- the project folder (.genv/) -----------------------------------------------------------


def find_home(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The project folder: the nearest ``.genv`` in ``start`` (default: the current folder) or
    above it, like git; else ``~/.genv``, where genv 1.4.3 also looked."""
    folder = Path(os.getcwd() if start is None else start).absolute()
    for candidate in (folder, *folder.parents):
        home = candidate / PROJECT_DIR
        if home.is_dir():
            return home
    user_home = os.environ.get("HOME")
    if user_home and (Path(user_home) / PROJECT_DIR).is_dir():
        return Path(user_home) / PROJECT_DIR
    return None


def require_home() -> Path:
    home = find_home()
    if home is None:
        raise ShellError(
            f"no {PROJECT_DIR} folder in {os.getcwd()} or above it; "
            "create one with: genv config --save"
        )
    return home


def read_project(home: Path) -> dict[str, str | int | None]:
    """The saved configuration: every field, None where no file holds it."""
    settings: dict[str, str | int | None] = {}
    for field in CONFIG_FIELDS:
        path = home / field
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            settings[field_key(field)] = None
            continue
        except (OSError, UnicodeDecodeError) as error:
            raise ShellError(f"cannot read {path}: {error}") from None
        try:
            settings[field_key(field)] = check_value(field, text) if text else None
        except (ShellError, ValueError) as error:
            raise ShellError(f"{path}: {error}") from None
    return settings


def write_project(home: Path, config: EnvConfig) -> None:
    """One file per field that is set (genv 1.4.3's layout); a cleared field loses its file."""
    values = {"name": config.name, "gpus": config.gpus, "gpu-memory": config.gpu_memory}
    try:
        home.mkdir(exist_ok=True)
        for field, value in values.items():
            path = home / field
            if value is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(str(value), encoding="utf-8")
    except OSError as error:
        raise ShellError(
            f"cannot save the configuration in {home}: {error.strerror or error}"
        ) from None


# -- steps ----------------------------------------------------------------------------------


def activate(
    store: Store,
    eid: str,
    pid: int,
    changes: Mapping[str, str | int | None],
    project: Mapping[str, str | int | None] | None = None,
    attach: bool = True,
    over_subscribe: bool = False,
) -> tuple[Environment, list[int]]:
    """Register ``pid`` in ``eid`` (creating it), configure it, attach what it asks for.

    A new environment starts from the project's saved configuration; one being joined keeps
    its own. ``changes`` (what the user typed) apply on top in both cases. Devices are
    attached only when a device count was applied here, so joining an environment never
    changes its devices. When attaching fails, ``pid`` is unregistered again so a failed
    activation leaves nothing behind.
    """
    with store.transaction() as tx:
        existed = tx.view().environment(eid, prefer_uid=store.caller_uid) is not None
        tx.activate(eid, store.caller_uid, pid=pid)
        settings = dict(project) if project and not existed else {}
        settings.update(changes)
        env = tx.configure(eid, **settings) if settings else tx.environment(eid)
        indices = sorted(a.device_index for a in tx.view().attachments_of(env))
    if attach and settings.get("gpus") is not None:
        try:
            indices = attach_devices(store, eid, over_subscribe=over_subscribe)
        except BaseException:
            with store.transaction() as tx:
                tx.deactivate(pid=pid)
            raise
    return env, indices


def attach_devices(
    store: Store,
    eid: str,
    count: int | None = None,
    index: int | None = None,
    over_subscribe: bool = False,
) -> list[int]:
    """Attach through the core (the one place devices are chosen); the indices now attached."""
    from genv.backends import open_backend
    from genv.core import devices

    return devices.attach(store, open_backend(), eid, count, index, over_subscribe)


def environment(store: Store, eid: str) -> tuple[Environment, list[int]]:
    """The environment ``eid`` and its attached indices, read without the lock."""
    state = store.read()
    env = state.environment(eid, prefer_uid=store.caller_uid)
    if env is None:
        raise ShellError(
            f"environment {eid} no longer exists (its processes are gone); run: genv deactivate"
        )
    return env, sorted(a.device_index for a in state.attachments_of(env))
