"""The project folder (``.genv/``): a configuration saved beside the code, one file per field
(genv 1.4.3's layout), found like git finds ``.git``."""

from __future__ import annotations

import os
from pathlib import Path

from genv.core.session import CONFIG_FIELDS, SessionError, check_value, field_key
from genv.domain.models import EnvConfig
from genv.errors import GenvError

PROJECT_DIR = ".genv"


def find_home(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The nearest ``.genv`` in ``start`` (default: the current folder) or above it; else
    ``~/.genv``, where genv 1.4.3 also looked."""
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
        raise SessionError(
            f"no {PROJECT_DIR} folder in {os.getcwd()} or above it; "
            "create one with: genv config --save"
        )
    return home


def read_project(home: Path) -> dict[str, object]:
    """The saved configuration: every field, None where no file holds it."""
    settings: dict[str, object] = {}
    for field in CONFIG_FIELDS:
        path = home / field
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read(4096).strip()
        except FileNotFoundError:
            settings[field_key(field)] = None
            continue
        except (OSError, UnicodeDecodeError) as error:
            raise SessionError(f"cannot read {path}: {error}") from None
        try:
            settings[field_key(field)] = check_value(field, text) if text else None
        except GenvError as error:
            raise SessionError(f"{path}: {error}") from None
    return settings


def write_project(home: Path, config: EnvConfig) -> None:
    """One file per field that is set; a cleared field loses its file."""
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
        raise SessionError(
            f"cannot save the configuration in {home}: {error.strerror or error}"
        ) from None
