"""What an active environment is to a process, for the shell commands and the Python API.

An environment is active in a process when ``GENV_ENVIRONMENT_ID`` is set in it; the other
variables below tell programs (and CUDA) what the environment holds. Only the standard
library is imported here: activation is on every shell prompt's path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from genv.domain.constants import BYPASS_VARIABLE, ENVIRONMENT_VARIABLE
from genv.domain.models import EnvConfig
from genv.errors import GenvError

ENVIRONMENT_ID = ENVIRONMENT_VARIABLE
CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
ENVIRONMENT_NAME = "GENV_ENVIRONMENT_NAME"
GPUS = "GENV_GPUS"
GPU_MEMORY = "GENV_GPU_MEMORY"
BYPASS = BYPASS_VARIABLE
# Everything activation sets besides PATH and the prompt, in the order it is exported.
VARIABLES = (ENVIRONMENT_ID, CUDA_VISIBLE_DEVICES, ENVIRONMENT_NAME, GPUS, GPU_MEMORY)
# Field name on the command line and file name in .genv/ (genv 1.4.3 uses the same files).
CONFIG_FIELDS = ("name", "gpus", "gpu-memory")
NO_DEVICES = "-1"  # CUDA_VISIBLE_DEVICES that hides every device


class SessionError(GenvError):
    """A user error of the environment commands (not active, already active, ...)."""


def shims_dir() -> str:
    """The folder activation puts first on PATH; it holds the ``nvidia-smi`` shim."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "shims")


def current_eid(environ: Mapping[str, str] | None = None) -> str | None:
    value = (os.environ if environ is None else environ).get(ENVIRONMENT_ID, "")
    return value or None


def require_eid() -> str:
    eid = current_eid()
    if eid is None:
        raise SessionError("not running in an active environment; start one with: genv activate")
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


def apply(values: Mapping[str, str | None]) -> None:
    """Set ``values`` in this process's environment (``variables`` of an environment, or
    what was there before); None removes the variable."""
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def field_key(field: str) -> str:
    """``gpu-memory`` (command line, file name) -> ``gpu_memory`` (EnvConfig, the store)."""
    return field.replace("-", "_")


def check_value(field: str, value: object) -> str | int:
    """The value of ``field`` as the store keeps it; InvalidValue when it makes no sense."""
    from genv.domain import validate

    if field == "gpus":
        return validate.count(value)
    if field == "gpu-memory":
        return validate.memory_amount(value)
    return validate.environment_name(value)


def config_lines(config: EnvConfig) -> list[str]:
    """``field: value`` for each field that is set, as ``genv config`` prints them."""
    values = {"gpu-memory": config.gpu_memory, "gpus": config.gpus, "name": config.name}
    return [f"{field}: {value}" for field, value in sorted(values.items()) if value is not None]
