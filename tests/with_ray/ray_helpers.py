"""Helpers for the Ray tests, used by the test process and inside Ray tasks alike.

Tasks use GPU memory on the simulated machine by adding their own pid to the machine file;
several tasks (and the test) write that file, so every change is made under a lock, through
genv's one writer (``write_machine``). Tasks say they are ready by writing a file, and wait
for the test's go-ahead file: nothing here sleeps to order events.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from genv.backends.machine_file import read_machine, write_machine

DEADLINE = 60.0


def wait_until(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """Poll ``condition`` until it is true; its value. Fails saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"within {timeout} s, not: {what}")
        time.sleep(0.05)


# -- the simulated machine, shared by the test and its tasks ---------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _change_machine(path: Path, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
                    devices: Sequence[str] | None = None) -> None:
    with _locked(path):
        if devices is None:
            spec, _ = read_machine(path)
            device_entries = [{"total_memory": total, "uuid": uuid, "name": name}
                              for uuid, name, total in spec.devices]
            entries = [{"pid": p.pid, "device": p.device, "used_memory": p.used_memory,
                        "start": p.start} for p in spec.processes]
        else:
            device_entries = [{"total_memory": total} for total in devices]
            entries = []
        write_machine(path, device_entries, change(entries))


def use_gpu_memory(amount: str, device: int | None = None) -> int:
    """In a task: this process now uses ``amount`` on its device (the first one Ray gave it)
    of the simulated machine; the device index."""
    import ray

    index = int(ray.get_gpu_ids()[0]) if device is None else device
    path = Path(os.environ["GENV_FAKE_MACHINE"])
    entry = {"pid": os.getpid(), "device": index, "used_memory": amount}
    _change_machine(path, lambda entries: [*entries, entry])
    return index


def claim_of(pid: int) -> str | None:
    """The environment ``pid`` claims in its initial environment, as enforcement reads it."""
    with open(f"/proc/{pid}/environ", "rb") as file:
        for variable in file.read().split(b"\0"):
            if variable.startswith(b"GENV_ENVIRONMENT_ID="):
                return variable.partition(b"=")[2].decode()
    return None


def where_am_i() -> dict[str, Any]:
    """In a task: its process, its claim, and the environment variables it runs with."""
    import ray

    return {
        "pid": os.getpid(),
        "claim": claim_of(os.getpid()),
        "eid": os.environ.get("GENV_ENVIRONMENT_ID"),
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpu_memory": os.environ.get("GENV_GPU_MEMORY"),
        "gpu_ids": [int(i) for i in ray.get_gpu_ids()],
    }


def ready_and_wait(folder: str, tag: str, go: str) -> dict[str, Any]:
    """In a task: write ``folder/tag`` (who it is), then wait for the file ``go``."""
    info = where_am_i()
    target = Path(folder) / tag
    target.with_suffix(".part").write_text(json.dumps(info))
    target.with_suffix(".part").rename(target)
    wait_until(lambda: Path(go).exists(), f"{go} was created")
    return info


class RayMachine:
    """The machine file and state folder of one Ray cluster's tests."""

    def __init__(self, root: Path, devices: Sequence[str]) -> None:
        self.root = root
        self.devices = tuple(devices)

    @property
    def path(self) -> Path:
        return self.root / "machine.json"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def reset(self) -> None:
        _change_machine(self.path, lambda entries: [], self.devices)

    def gpu_pids(self) -> list[int]:
        spec, _ = read_machine(self.path)
        return [p.pid for p in spec.processes]

    def environments(self) -> list[Any]:
        """The live environments (genv's own reading of the state folder)."""
        from genv.store import Store

        store = Store(root=self.state_dir)
        try:
            state = store.read()
            return [(env, state.attachments_of(env)) for env in state.environments]
        finally:
            store.close()

    def environment(self, eid: str) -> Any:
        """(Environment, attachments) of ``eid``, or None when it does not live."""
        return next(((env, a) for env, a in self.environments() if env.eid == eid), None)

    def wait_ready(self, folder: Path, tag: str) -> dict[str, Any]:
        path = folder / tag
        wait_until(path.exists, f"task {tag} is ready")
        return json.loads(path.read_text())

    # -- the command line ----------------------------------------------------------------

    def genv(self, *args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "genv", *args], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)

    def start_enforce(self, *args: str) -> Enforcer:
        out = self.root / f"enforce-{time.monotonic_ns()}.out"
        with open(out, "w") as file:
            process = subprocess.Popen([sys.executable, "-m", "genv", "enforce", *args],
                                       stdout=file, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        return Enforcer(process, out)


class Enforcer:
    """``genv enforce`` running in the background; its output in a file."""

    def __init__(self, process: subprocess.Popen[bytes], out: Path) -> None:
        self.process = process
        self.out = out

    def output(self) -> str:
        return self.out.read_text()

    def wait_for(self, text: str, timeout: float = DEADLINE) -> str:
        def seen() -> str:
            assert self.process.poll() is None, f"genv enforce exited:\n{self.output()}"
            return self.output() if text in self.output() else ""

        try:
            return wait_until(seen, f"genv enforce said {text!r}", timeout)
        except AssertionError as error:
            raise AssertionError(f"{error}; it said:\n{self.output()}") from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def require_ray() -> Any:
    """Ray, for a test module: skipped without it, unless GENV_REQUIRE_RAY=1 (CI), where a
    missing Ray is an error."""
    if os.environ.get("GENV_REQUIRE_RAY") == "1":
        import ray

        return ray
    import pytest

    return pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
