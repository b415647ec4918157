"""Fixtures of the compatibility tests: genv 1.4.3 and jupyterlab-genv, the real ones (see
peers.py), and a ``genv`` on PATH that can be switched from 1.4.3 to this project, as
``pip install`` switches the one in /usr/local/bin under terminals that stay open."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import peers
from shellkit import GENV_BIN

STANDINS = peers.REPO / "standins"


@pytest.fixture(scope="session")
def genv_143() -> Path:
    """genv 1.4.3's ``genv`` program."""
    return peers.ensure(peers.GENV_143) / "bin" / "genv"


class Switch:
    """A folder first on PATH whose ``genv`` is genv 1.4.3's until ``switch()``."""

    def __init__(self, folder: Path, old: Path) -> None:
        self.folder = folder
        self.link = folder / "genv"
        self.link.symlink_to(old)

    def switch(self) -> None:
        temporary = self.folder / "genv.new"
        temporary.symlink_to(Path(GENV_BIN) / "genv")
        os.replace(temporary, self.link)

    def path(self, rest: str | None) -> str:
        """PATH with this folder first, then the stand-in nvidia-smi (1.4.3 runs it)."""
        return f"{self.folder}:{STANDINS}:{rest or '/usr/bin:/bin'}"


@pytest.fixture
def switch(shared_tmp: Path, genv_143: Path) -> Iterator[Switch]:
    folder = shared_tmp / "bin"
    folder.mkdir()
    yield Switch(folder, genv_143)


@pytest.fixture
def peer_env(fake_machine: Any) -> dict[str, str]:
    """The environment genv 1.4.3 runs in: the simulated machine through the stand-in."""
    return {
        "GENV_TMPDIR": str(fake_machine.state_dir),
        "GENV_FAKE_MACHINE": str(fake_machine.path),
        "GENV_GPU_BACKEND": "fake",
    }


@pytest.fixture
def bash(switch: Switch, peer_env: dict[str, str], shared_tmp: Path) -> Iterator[Any]:
    """Start interactive bash shells with the switchable genv first on PATH."""
    from shellkit import PROMPT, Shell

    started: list[Shell] = []
    work = shared_tmp / "work"
    work.mkdir()

    def start(env: dict[str, str] | None = None) -> Shell:
        environment = {k: v for k, v in os.environ.items()
                       if not k.startswith(("GENV_", "_GENV", "CUDA_VISIBLE"))}
        environment.update(peer_env, PS1=PROMPT, TERM="dumb", HOME=str(shared_tmp),
                           PATH=switch.path(os.environ.get("PATH")))
        environment.update(env or {})
        instance = Shell("bash", environment, work)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.close()
