"""genv.sdk has genv 1.4.3's whole surface: the same names, parameters and meaning, and one
error base (a RuntimeError, as 1.4.3's errors were). 1.4.3's own signatures are read from the
real package, in its own virtual environment."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from genv import sdk

import peers

SURFACE = """
import inspect, json, genv.sdk as s
names = ["active", "activate", "attach", "attached", "configuration", "configure", "detach",
         "eid", "home", "load_configuration", "lock", "refresh_attached",
         "refresh_configuration", "save_configuration"]
out = {n: [[p.name, str(p.kind)] for p in inspect.signature(getattr(s, n)).parameters.values()]
       for n in names}
out["Env.Config"] = list(s.Env.Config.__dataclass_fields__)
out["Env"] = list(s.Env.__dataclass_fields__)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def surface_143() -> dict[str, Any]:
    python = peers.ensure(peers.GENV_143) / "bin" / "python"
    result = subprocess.run([str(python), "-c", SURFACE], capture_output=True, text=True,
                            check=True, timeout=60, cwd="/")
    return json.loads(result.stdout)


def test_every_function_takes_what_143_took(surface_143: dict[str, Any]) -> None:
    for name, parameters in surface_143.items():
        if name.startswith("Env"):
            continue
        ours = inspect.signature(getattr(sdk, name)).parameters
        for parameter, kind in parameters:
            assert parameter in ours or kind == "POSITIONAL_OR_KEYWORD", (name, parameter)
            if kind == "KEYWORD_ONLY":
                assert ours[parameter].kind in (inspect.Parameter.KEYWORD_ONLY,
                                                inspect.Parameter.POSITIONAL_OR_KEYWORD)
        positional = [p for p, kind in parameters if kind == "POSITIONAL_OR_KEYWORD"]
        ours_positional = [p for p in ours.values()
                           if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        assert len(ours_positional) >= len(positional), name
    assert list(sdk.Env.Config.__dataclass_fields__) == surface_143["Env.Config"]
    assert list(sdk.Env.__dataclass_fields__) == surface_143["Env"]


def test_code_written_for_143(machine: Any, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    assert sdk.home() is None and not sdk.active()
    with pytest.raises(RuntimeError):  # 1.4.3 raised RuntimeError; ours is one too
        sdk.configuration()
    with sdk.lock():  # outside an environment: nothing to hold
        pass
    with sdk.activate(eid="job", config=sdk.Env.Config(name="job", gpus=1)):
        assert sdk.eid() == "job" and sdk.attached() == [0]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        assert sdk.configuration() == sdk.Env.Config(name="job", gpus=1)
        sdk.configure(sdk.Env.Config(gpu_memory="4gi", gpus=1))  # the whole configuration
        assert sdk.refresh_configuration() == sdk.Env.Config(gpu_memory="4gi", gpus=1)
        assert os.environ["GENV_GPU_MEMORY"] == "4gi"
        assert "GENV_ENVIRONMENT_NAME" not in os.environ
        assert sdk.attach(gpus=2, allow_over_subscription=False) == [0, 1]
        assert sdk.refresh_attached() == [0, 1]
        assert sdk.detach(1) == [0]
        (tmp_path / ".genv").mkdir()
        assert sdk.home() == tmp_path / ".genv"
        sdk.save_configuration()
        assert (tmp_path / ".genv" / "gpu-memory").read_text() == "4gi"
        assert not (tmp_path / ".genv" / "name").exists()
        (tmp_path / ".genv" / "name").write_text("saved\n")
        loaded = sdk.load_configuration()
        assert loaded == sdk.Env.Config(name="saved", gpu_memory="4gi", gpus=1)
        assert os.environ["GENV_ENVIRONMENT_NAME"] == "saved"
        sdk.configure(loaded)
        assert sdk.configuration().name == "saved"
        with sdk.lock() as indices:
            assert indices == []  # nothing shared
    assert not sdk.active()
    with pytest.raises(sdk.GenvError, match="not both"), sdk.activate():
        sdk.attach(index=0, gpus=1)


@pytest.fixture
def machine(fake_machine: Any) -> Any:
    fake_machine.set_devices(2)
    return fake_machine
