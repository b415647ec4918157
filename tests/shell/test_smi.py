"""The nvidia-smi shim, run as a program the way PATH finds it, on a simulated machine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from genv.smi import request as smi

from shellkit import with_genv_path

REPO = Path(__file__).resolve().parents[2]
SHIM = REPO / "src" / "genv" / "shims" / "nvidia-smi"
STANDIN = REPO / "standins" / "nvidia-smi"


def test_parse() -> None:
    assert smi.parse([]) == smi.Request()
    request = smi.parse(["--query-gpu=index,memory.used", "--format", "csv,noheader", "-i", "1"])
    assert request is not None
    assert request.query_gpu == ["index", "memory.used"]
    assert request.format == ["csv", "noheader"]
    assert request.ids == ["1"]
    assert smi.parse(["-L"]) == smi.Request(list_gpus=True)
    for unknown in (["-q"], ["--query-gpu"], ["dmon"], ["-L", "-x"],
                    ["--query-gpu=index", "--query-compute-apps=pid"]):
        assert smi.parse(unknown) is None, unknown


@pytest.fixture
def env_with_process(fake_machine: Any, new_env: Any, run_genv: Any, sleeper: Any) -> Any:
    """Environment ``e1`` on device 0 of 2, with one process of its own and a foreign one."""
    fake_machine.set_devices(2)
    mine = new_env("e1", gpus=1, gpu_memory="8gi")
    assert run_genv("devices", "attach", "--eid", "e1").rc == 0
    foreign = sleeper()
    fake_machine.add_process(mine.pid, 0, "2gi")
    fake_machine.add_process(foreign.pid, 0, "1gi")
    fake_machine.add_process(foreign.pid, 1, "1gi")
    return mine, foreign


def run_shim(*args: str, path: str | None = None, eid: str | None = "e1") -> Any:
    env = {k: v for k, v in os.environ.items() if k != "GENV_ENVIRONMENT_ID"}
    if eid is not None:
        env["GENV_ENVIRONMENT_ID"] = eid
    env["PATH"] = with_genv_path(path if path is not None else env.get("PATH"))
    return subprocess.run([str(SHIM), *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_queries_show_the_environment_only(env_with_process: Any) -> None:
    mine, foreign = env_with_process
    result = run_shim("--query-compute-apps=pid,process_name,used_memory", "--format=csv")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "pid, process_name, used_gpu_memory [MiB]", f"{mine.pid}, sleep, 2048 MiB"]
    result = run_shim("--query-gpu=count,uuid,memory.free", "--format=csv,noheader,nounits")
    assert result.stdout.splitlines() == ["1, GPU-00000000-0000-0000-0000-000000000000, 6144"]
    result = run_shim("--query-gpu=index", "--format=csv,noheader", "--id=1")
    assert (result.stdout.strip(), result.returncode) == ("No devices were found", 6)
    result = run_shim("--query-gpu=index")
    assert result.returncode == 2 and "--format=csv" in result.stderr


@pytest.mark.skipif(not STANDIN.exists(), reason="no stand-in nvidia-smi in this checkout")
def test_fields_the_shim_lacks_come_from_the_real_one_filtered(
    env_with_process: Any, shared_tmp: Path,
) -> None:
    mine, _ = env_with_process
    real = shared_tmp / "bin"
    real.mkdir()
    (real / "nvidia-smi").symlink_to(STANDIN)
    path = f"{SHIM.parent}:{real}:{os.environ['PATH']}"
    result = run_shim("--query-gpu=index,temperature.gpu", "--format=csv", path=path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "index, temperature.gpu" and len(lines) == 2
    assert lines[1].startswith("0, ")
    result = run_shim("--query-compute-apps=pid,gpu_bus_id", "--format=csv,noheader", path=path)
    assert [line.split(",")[0] for line in result.stdout.splitlines()] == [str(mine.pid)]


def test_passing_through_without_a_real_nvidia_smi(fake_machine: Any) -> None:
    for eid in (None, "e1"):
        result = run_shim("-q", path="/usr/bin:/bin", eid=eid)
        assert result.returncode == 127
        assert len(result.stderr.splitlines()) == 1 and "nvidia-smi" in result.stderr
