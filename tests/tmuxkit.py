"""A real terminal for full-screen commands (``genv top``): tmux, driven with send-keys and
read with capture-pane.

- ``Terminal``: a tmux server of its own, one window of a fixed size running one command;
- ``terminal``: the fixture (a test module or conftest imports it), ``terminal()`` makes one,
  closed after the test; skipped where tmux is not installed, failed in CI (``.ci/run``
  installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

GENV_VARIABLES = ("GENV_TMPDIR", "GENV_GPU_BACKEND", "GENV_FAKE_MACHINE")


class Terminal:
    """A tmux server of its own, one window of a fixed size running one command."""

    def __init__(self, name: str, environment: dict[str, str]) -> None:
        self.socket = f"genvtest-{os.getpid()}-{name}"
        self.environment = environment

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-u", "-L", self.socket, "-f", "/dev/null", *args],
            env=self.environment, capture_output=True, text=True, timeout=30, check=check,
        )

    def start(self, command: list[str], width: int = 160, height: int = 50) -> None:
        self.tmux("new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height),
                  " ".join(command))

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top").stdout

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.tmux("send-keys", "-t", "top", *(["-l"] if literal else []), *keys)

    def wait_for(self, check: Callable[[str], bool], timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if check(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"the screen never showed what was expected:\n{screen}")
            time.sleep(0.1)

    def running(self) -> bool:
        return self.tmux("has-session", "-t", "top", check=False).returncode == 0

    def close(self) -> None:
        self.tmux("kill-server", check=False)


@pytest.fixture
def terminal() -> Iterator[Callable[[], Terminal]]:
    if shutil.which("tmux") is None:
        if os.environ.get("CI"):  # .ci/run installs it: missing there is a failure
            pytest.fail("tmux is not installed, though .ci/run installs it")
        pytest.skip("tmux is not installed (apt-get install tmux)")
    made: list[Terminal] = []

    def make() -> Terminal:
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "TERM": "xterm-256color",
            "HOME": os.environ.get("HOME", "/root"),
            **{name: os.environ[name] for name in GENV_VARIABLES if name in os.environ},
        }
        made.append(Terminal(str(len(made)), environment))
        return made[-1]

    yield make
    for each in made:
        each.close()
