"""What the remote tests do on a simulated host: environments, GPU processes, waiting."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from support import wait_environ


class Result(NamedTuple):
    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def env_on(host: Any, run_genv: Callable[..., Any], sleeper: Callable[..., Any], user: Any,
           eid: str, devices: int = 1) -> subprocess.Popen[bytes]:
    """Environment ``eid`` of ``user`` on ``host``, alive while its keeper runs, with
    ``devices`` devices attached (through genv's own commands, on that host's state)."""
    keeper = sleeper(user=user, env={"GENV_ENVIRONMENT_ID": eid})
    result = run_genv("envs", "activate", "--eid", eid, "--uid", str(user.uid), "--username",
                      user.name, "--pid", str(keeper.pid), user=user, env=host.env())
    assert result.rc == 0, result
    if devices:
        result = run_genv("devices", "attach", "--eid", eid, "--count", str(devices),
                          user=user, env=host.env())
        assert result.rc == 0, result
    return keeper


def gpu_process(host: Any, sleeper: Callable[..., Any], user: Any, eid: str | None,
                device: int, memory: str = "1gi") -> subprocess.Popen[bytes]:
    """A real process of ``user`` (claiming ``eid``) that the host's GPU shows on ``device``."""
    env = {"GENV_ENVIRONMENT_ID": eid} if eid else {"GENV_TEST": "1"}
    process = sleeper(user=user, env=env)
    wait_environ(process.pid)
    host.add_process(process.pid, device, memory)
    return process


def wait_exit(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {process.pid} is still running")


class Lines:
    """The lines a running command writes to one stream, collected as they come."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 30.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(text in line for line in self.lines) >= count:
                return
            time.sleep(0.02)
        raise AssertionError(f"no line with {text!r} in: {self.lines}")

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)
