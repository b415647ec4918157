"""The Python API (genv.sdk) on a simulated machine, in this very process."""

from __future__ import annotations

import fcntl
import os
from typing import Any

import pytest

from genv import sdk
from genv.domain.allocation import AllocationError
from genv.store import Store

CONFIG_VARIABLES = ("GENV_ENVIRONMENT_NAME", "GENV_GPUS", "GENV_GPU_MEMORY")


@pytest.fixture
def machine(fake_machine: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    fake_machine.set_devices(2)
    for name in (*CONFIG_VARIABLES, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    return fake_machine


def live_environments() -> dict[str, tuple[int, ...]]:
    store = Store()
    try:
        return {env.eid: env.pids for env in store.read().environments}
    finally:
        store.close()


def test_activate_registers_this_process_and_restores_the_variables(
    machine: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    monkeypatch.setenv("GENV_GPU_MEMORY", "")
    before = dict(os.environ)
    assert not sdk.active()
    with sdk.activate(gpus=1, name="job") as eid:
        assert eid == str(os.getpid()) == sdk.eid()
        assert sdk.active()
        assert os.environ["GENV_ENVIRONMENT_ID"] == eid
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        assert os.environ["GENV_GPUS"] == "1"
        assert os.environ["GENV_ENVIRONMENT_NAME"] == "job"
        assert "GENV_GPU_MEMORY" not in os.environ
        assert live_environments() == {eid: (os.getpid(),)}
        assert sdk.attached() == [0]
        assert sdk.configuration().name == "job"
    assert dict(os.environ) == before
    assert live_environments() == {}


def test_attach_detach_and_configure_follow_the_store(machine: Any) -> None:
    with sdk.activate():
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "-1"
        assert sdk.attach(count=2) == [0, 1]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
        assert sdk.detach(0) == [1]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
        assert sdk.detach() == []
        assert sdk.attach(index=1) == [1]

        config = sdk.configure(gpu_memory="4g", gpus=1)
        assert (config.gpu_memory, config.gpus) == ("4g", 1)
        assert os.environ["GENV_GPU_MEMORY"] == "4g" and os.environ["GENV_GPUS"] == "1"
        assert sdk.configure(gpu_memory=None).gpu_memory is None
        assert "GENV_GPU_MEMORY" not in os.environ
        with pytest.raises(sdk.GenvError):
            sdk.configure(gpus=-1)


def test_join_an_existing_environment(machine: Any, new_env: Any, run_genv: Any) -> None:
    new_env("shared", gpus=1)
    assert run_genv("devices", "attach", "--eid", "shared").rc == 0
    with sdk.activate(eid="shared", attach=False) as eid:
        assert eid == "shared"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        assert os.getpid() in live_environments()["shared"]
    assert os.getpid() not in live_environments()["shared"]


def test_errors(machine: Any) -> None:
    for call in (sdk.attached, sdk.configuration, sdk.attach, sdk.detach):
        with pytest.raises(sdk.GenvError, match="not running in an active environment"):
            call()
    before = dict(os.environ)
    with pytest.raises(AllocationError), sdk.activate(gpus=3):
        pass
    assert dict(os.environ) == before
    assert live_environments() == {}
    with sdk.activate(), pytest.raises(sdk.GenvError, match="already running"), sdk.activate():
        pass


def test_lock_holds_the_shared_devices(machine: Any, new_env: Any, run_genv: Any) -> None:
    new_env("other")
    assert run_genv("devices", "attach", "--eid", "other", "--index", "0").rc == 0
    with sdk.activate(gpus=2, over_subscribe=True):
        with sdk.lock() as indices:
            assert indices == [0]  # device 0 is shared, device 1 is not
            assert _locked(machine.state_dir / "device-0.lock")
        assert not _locked(machine.state_dir / "device-0.lock")


def test_lock_without_shared_devices_locks_nothing(machine: Any) -> None:
    with sdk.activate(gpus=1), sdk.lock() as indices:
        assert indices == []


def _locked(path: Any) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
