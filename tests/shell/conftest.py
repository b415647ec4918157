"""A real interactive bash (and zsh, when installed) driven through a terminal with pexpect.

``shell("bash")`` starts ``bash --norc --noprofile -i`` (``zsh -f -i``) with a known prompt
and the simulated machine of the ``fake_machine`` fixture (2 devices here); ``Shell.run``
types a command and returns its output and exit status. Every shell and every process the
tests start is ended at teardown.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shellkit import PROMPT, Shell, with_genv_path


@pytest.fixture(params=["bash", "zsh"])
def kind(request: pytest.FixtureRequest) -> str:
    if shutil.which(request.param) is None:
        pytest.skip(f"{request.param} is not installed")
    return request.param


@pytest.fixture
def machine(fake_machine: Any) -> Any:
    """The shared simulated machine, with the 2 devices these tests expect."""
    fake_machine.set_devices(2)
    return fake_machine


@pytest.fixture
def workdir(shared_tmp: Path) -> Path:
    path = shared_tmp / "work"
    path.mkdir()
    return path


@pytest.fixture
def shell_env(machine: Any, shared_tmp: Path) -> dict[str, str]:
    """The environment shells start with: this test's machine and state, nothing genv-active."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GENV_ENVIRONMENT", "GENV_GPU", "GENV_SHELL", "GENV_BYPASS",
                                "_GENV", "GENV_PREACTIVATE", "CUDA_VISIBLE"))}
    env.update(
        GENV_GPU_BACKEND="fake",
        GENV_FAKE_MACHINE=str(machine.path),
        GENV_TMPDIR=str(machine.state_dir),
        PS1=PROMPT,
        TERM="dumb",
        HOME=str(shared_tmp),
        PATH=with_genv_path(os.environ.get("PATH")),
    )
    return env


@pytest.fixture
def shell(shell_env: dict[str, str], workdir: Path) -> Iterator[Callable[..., Shell]]:
    """Start shells (``shell("bash", env={...})``); all are closed at teardown."""
    started: list[Shell] = []

    def start(kind: str = "bash", env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Shell:
        environment = dict(shell_env)
        environment.update(env or {})
        instance = Shell(kind, environment, cwd or workdir)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.close()


@pytest.fixture
def background() -> Iterator[Callable[[int], None]]:
    """Register pids started inside a shell (``sleep 300 &``) to kill at teardown."""
    pids: list[int] = []
    yield pids.append
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
