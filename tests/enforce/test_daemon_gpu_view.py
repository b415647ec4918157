"""The GPUs lost and back: while the view is partial (a device or a process list could not be
read) or cannot be had at all (BackendError), nothing is terminated or detached; that is
logged once when it starts and once when it clears, and enforcement resumes on a whole view.
In-process, with real processes and a real store; once with a scripted backend, once with
the NVML backend over the stand-in driver (tests/backends/nvml_fakes.py)."""

from __future__ import annotations

import io
import logging
import subprocess

import pytest
from backends.nvml_fakes import GI, GPU_IS_LOST, UNINITIALIZED, Clock, FakeDriver, FakeGpu

from genv.backends.base import BackendError
from genv.backends.nvml import FIRST_BACKOFF_S, NvmlBackend
from genv.domain.models import Device, GpuProcess, GpuSnapshot
from genv.enforce.daemon import Enforcer
from genv.enforce.executor import Detacher, Terminator
from genv.enforce.observe import Observer
from genv.enforce.report import Reporter
from genv.enforce.rules import RuleConfig
from genv.store import Store

from support import wait_environ

GIB = 1 << 30
PARTIAL = "the GPUs could be read only in part"
UNAVAILABLE = "cannot take a snapshot of the GPUs"


class Scripted:
    """A backend whose view the test sets: whole, partial (device 1 lost) or none."""

    name = "scripted"

    def __init__(self) -> None:
        self.mode = "whole"
        self.processes: list[tuple[int, int]] = []  # (pid, device)

    def snapshot(self, processes: bool = True) -> GpuSnapshot:
        if self.mode == "none":
            raise BackendError("NVML: Driver Not Loaded (the driver is being reloaded)")
        lost = {1} if self.mode == "partial" else set()
        devices = tuple(Device(i, f"GPU-{i}", "fake", 80 * GIB, 0) for i in (0, 1)
                        if i not in lost)
        listed = tuple(GpuProcess(pid, d, f"GPU-{d}", GIB) for pid, d in self.processes
                       if d not in lost)
        errors = ("device 1: GPU is lost",) if lost else ()
        return GpuSnapshot(devices, listed, errors, partial=bool(lost))

    def close(self) -> None:
        pass


@pytest.fixture
def machine_of(shared_dir, procs):
    """A store with root's environment e1 on devices 0 and 1 (kept alive by a shell), a
    process of e1 on device 1 and a stray process on device 0; an Enforcer over ``backend``
    that would terminate the stray (--non-env-processes) and detach one device (at most 1
    per user)."""
    created = []

    def make(backend):
        state = shared_dir / "state"
        state.mkdir(mode=0o1777, exist_ok=True)
        state.chmod(0o1777)
        store = Store(state)
        shell = procs.start(eid="e1")
        with store.transaction() as tx:
            tx.activate("e1", pid=shell.pid)
            tx.attach("e1", 0)
            tx.attach("e1", 1)
        member = procs.start(eid="e1")
        wait_environ(member.pid)
        stray = procs.start()
        out = io.StringIO()
        enforcer = Enforcer(
            Observer(backend, store),
            RuleConfig(non_env_processes=True, max_devices_per_user=1),
            Terminator(grace=1),
            Detacher(store),
            Reporter(stream=out),
        )
        created.append(enforcer)
        return enforcer, store, out, shell, member, stray

    yield make
    for enforcer in created:
        enforcer.terminator.close()


def attached(store: Store) -> list[int]:
    return sorted(a.device_index for a in store.read().attachments)


def assert_nothing_done(enforcer, store, out, *alive: subprocess.Popen) -> None:
    assert enforcer.cycle() is None
    assert out.getvalue() == ""
    assert attached(store) == [0, 1]
    assert enforcer.terminator.pending == 0
    for process in alive:
        assert process.poll() is None


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "genv.enforce"]


def test_nothing_is_done_on_a_partial_or_missing_view(machine_of, caplog):
    backend = Scripted()
    enforcer, store, out, shell, member, stray = machine_of(backend)
    backend.processes = [(stray.pid, 0), (member.pid, 1)]
    caplog.set_level(logging.INFO, logger="genv.enforce")

    backend.mode = "partial"  # e1's process on device 1 is not seen: device 1 looks idle
    for _ in range(3):
        assert_nothing_done(enforcer, store, out, shell, member, stray)
    backend.mode = "none"
    for _ in range(3):
        assert_nothing_done(enforcer, store, out, shell, member, stray)
    backend.mode = "partial"
    assert_nothing_done(enforcer, store, out, shell, member, stray)

    said = warnings_of(caplog)
    assert sum(PARTIAL in line for line in said) == 2  # when it began, and when it came back
    assert sum(UNAVAILABLE in line for line in said) == 1
    assert not [line for line in said if line.startswith("resolved:")]

    backend.mode = "whole"
    plan = enforcer.cycle()

    assert plan is not None
    # both devices busy (root's stray on 0, e1's process on 1): the most recent goes, and the
    # line does not claim that no work is lost there
    assert out.getvalue().splitlines() == [
        f"Process {stray.pid} is not running in a GPU environment",
        "User root is using 2 devices which is 1 more than the maximum allowed",
        f"Terminating process {stray.pid} from environment N/A that is running on GPU(s) 0",
        f"Terminating process {member.pid} from environment e1 that is running on GPU(s) 1",
        "Detaching environment e1 of user root from device 1",
        "  because device 1 is the one user root attached most recently",
    ]
    assert stray.wait(timeout=5) and member.wait(timeout=5)
    assert attached(store) == [0]
    said = warnings_of(caplog)
    assert sum(line.startswith("resolved:") and "GPUs" in line for line in said) == 1
    assert shell.poll() is None


def test_nvml_lost_and_back_through_the_stand_in_driver(machine_of, monkeypatch, caplog):
    driver = FakeDriver().install(monkeypatch)
    clock = Clock()
    enforcer, store, out, shell, member, stray = machine_of(NvmlBackend(clock=clock))
    driver.gpus = [FakeGpu("GPU-a", compute=[(stray.pid, GI)]),
                   FakeGpu("GPU-b", compute=[(member.pid, GI)])]
    caplog.set_level(logging.INFO, logger="genv.enforce")

    driver.gpus[1].error = GPU_IS_LOST  # one device lost: a partial view
    for _ in range(3):
        assert_nothing_done(enforcer, store, out, shell, member, stray)
    driver.count_error = UNINITIALIZED  # then the whole driver (a reload)
    for _ in range(3):
        assert_nothing_done(enforcer, store, out, shell, member, stray)
        clock.advance(FIRST_BACKOFF_S / 2)
    said = warnings_of(caplog)
    assert sum(PARTIAL in line for line in said) == 1
    assert sum(UNAVAILABLE in line for line in said) == 1  # not again as NVML counts down

    driver.count_error = None  # back
    driver.gpus[1].error = None
    clock.advance(60)
    plan = enforcer.cycle()

    assert plan is not None
    assert f"Terminating process {stray.pid} " in out.getvalue()
    assert stray.wait(timeout=5) and member.wait(timeout=5)
    assert attached(store) == [0]
    assert sum(line.startswith("resolved:") and "GPUs" in line
               for line in warnings_of(caplog)) == 1
