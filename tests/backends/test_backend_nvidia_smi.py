"""The nvidia-smi backend: the parser on output samples, and the backend end to end against
a stand-in ``nvidia-smi`` script put first on PATH."""

from __future__ import annotations

import json
import os
import select
import stat
import sys
import textwrap
import time
from pathlib import Path

import pytest

from genv.backends.base import BackendError
from genv.backends.nvidia_smi import (
    NvidiaSmiBackend,
    build_snapshot,
    first_line,
    parse_apps,
    parse_gpus,
    parse_mib,
)

SAMPLES = Path(__file__).parent / "samples"
MI = 1024**2


def sample(name: str) -> tuple[str, str]:
    return (
        (SAMPLES / f"{name}.gpus.csv").read_text(),
        (SAMPLES / f"{name}.apps.csv").read_text(),
    )


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("81920", 81920 * MI),
        (" 7295 ", 7295 * MI),
        ("0", 0),
        ("[N/A]", None),
        ("[Not Supported]", None),
        ("[Insufficient Permissions]", None),
        ("N/A", None),
        ("", None),
        ("garbage", None),
    ],
)
def test_parse_mib(field: str, expected: int | None) -> None:
    assert parse_mib(field) == expected


def test_a100_x8() -> None:
    snapshot = build_snapshot(*sample("a100-sxm4-80gb-x8"))
    assert snapshot.errors == ()
    assert [d.index for d in snapshot.devices] == list(range(8))
    assert {d.name for d in snapshot.devices} == {"NVIDIA A100-SXM4-80GB"}
    assert {d.total_memory for d in snapshot.devices} == {81920 * MI}
    assert snapshot.devices[2].used_memory == 40512 * MI
    assert snapshot.devices[0].uuid == "GPU-5d8f1c2e-3b7a-4e90-8c1d-2f6a9b0e4c71"
    processes = {p.pid: p for p in snapshot.processes}
    assert set(processes) == {63600, 71234, 71301, 88017}
    assert processes[63600].device_index == 0
    assert processes[63600].used_memory == 7295 * MI
    assert processes[71234].device_index == processes[71301].device_index == 2
    assert processes[88017].device_index == 7
    assert processes[88017].device_uuid == snapshot.devices[7].uuid


def test_h100_garbage_pids_dropped() -> None:
    snapshot = build_snapshot(*sample("h100-80gb-hbm3-x4"))
    assert snapshot.errors == ()
    assert [d.name for d in snapshot.devices] == ["NVIDIA H100 80GB HBM3"] * 4
    assert snapshot.devices[0].total_memory == 81559 * MI
    assert [(p.pid, p.device_index, p.used_memory) for p in snapshot.processes] == [
        (120455, 1, 64360 * MI)
    ]


def test_idle_t4_without_processes() -> None:
    snapshot = build_snapshot(*sample("t4-single-idle"))
    assert snapshot.errors == ()
    assert [(d.index, d.name, d.total_memory, d.used_memory) for d in snapshot.devices] == [
        (0, "Tesla T4", 15360 * MI, 0)
    ]
    assert snapshot.processes == ()


def test_names_with_spaces() -> None:
    snapshot = build_snapshot(*sample("rtx-workstation"))
    assert [d.name for d in snapshot.devices] == [
        "NVIDIA GeForce RTX 4090",
        "NVIDIA GeForce RTX 3090",
        "NVIDIA RTX A6000",
    ]
    assert [(p.pid, p.device_index) for p in snapshot.processes] == [(2841, 0), (9120, 2)]


def test_not_available_memory() -> None:
    snapshot = build_snapshot(*sample("gb10-na-memory"))
    (device,) = snapshot.devices
    assert device.name == "NVIDIA GB10"
    assert device.total_memory == 0
    assert device.used_memory is None
    assert len(snapshot.errors) == 1 and "total memory" in snapshot.errors[0]
    assert [(p.pid, p.used_memory) for p in snapshot.processes] == [(4410, None), (4502, None)]


def test_blank_lines_and_trailing_spaces() -> None:
    snapshot = build_snapshot(*sample("v100-l4-mixed"))
    assert snapshot.errors == ()
    assert [(d.name, d.used_memory) for d in snapshot.devices] == [
        ("Tesla V100-SXM2-32GB", 30210 * MI),
        ("NVIDIA L4", None),
    ]
    assert [p.pid for p in snapshot.processes] == [15002, 15003]


def test_processes_not_asked_for() -> None:
    gpus, _ = sample("a100-sxm4-80gb-x8")
    assert build_snapshot(gpus, None).processes == ()


def test_unreadable_lines_become_errors() -> None:
    devices, errors, notes = parse_gpus(
        "0, GPU-a, Tesla T4, 15360, 0\nnonsense\nx, GPU-b, T4, 1, 1\n"
    )
    assert [d.uuid for d in devices] == ["GPU-a"]
    assert len(errors) == 2 and notes == []
    apps, errors = parse_apps("GPU-a, 12, 5\nGPU-a, twelve, 5\nGPU-a\n")
    assert apps == [("GPU-a", 12, 5 * MI)]
    assert len(errors) == 2


def test_a_line_lost_makes_the_view_partial() -> None:
    snapshot = build_snapshot("0, GPU-a, Tesla T4, 15360, 0\nnonsense\n", "GPU-a, 12, 5\n")
    assert snapshot.partial and len(snapshot.errors) == 1
    snapshot = build_snapshot("0, GPU-a, Tesla T4, 15360, 0\n", "GPU-a, -3, 5\n")
    assert snapshot.partial and snapshot.processes == ()
    assert not build_snapshot(*sample("gb10-na-memory")).partial  # a note loses nothing


@pytest.mark.parametrize(
    "line",
    [
        "GPU-a, 99999999999999999999999999, 5",
        "GPU-a, 4194305, 5",  # beyond any pid Linux gives
        "GPU-a, 1e3, 5",
        "GPU-a, \u0661\u0662, 5",  # digits, but not ASCII ones
    ],
)
def test_odd_pids_are_errors_not_crashes(line: str) -> None:
    snapshot = build_snapshot("0, GPU-a, Tesla T4, 15360, 0\n", line + "\n")
    assert snapshot.processes == () and snapshot.partial
    assert len(snapshot.errors) == 1 and "\n" not in snapshot.errors[0]


@pytest.mark.parametrize("field", ["inf", "nan", "1e999", "-5", "18446744073709551615000"])
def test_odd_amounts_are_not_available(field: str) -> None:
    assert parse_mib(field) is None


def test_odd_indices_are_errors() -> None:
    devices, errors, _ = parse_gpus("99999999999999999999, GPU-a, T4, 1, 1\n-1, GPU-b, T4, 1, 1\n")
    assert devices == [] and len(errors) == 2


def test_name_with_a_comma_is_kept_whole() -> None:
    devices, errors, _ = parse_gpus("0, GPU-a, Odd, Name, 100, 1\n")
    assert errors == []
    assert devices[0].name == "Odd, Name"
    assert devices[0].total_memory == 100 * MI


def test_process_on_unknown_uuid_and_duplicates() -> None:
    snapshot = build_snapshot(
        "0, GPU-a, Tesla T4, 15360, 0\n",
        "GPU-a, 10, [N/A]\nGPU-a, 10, 300\nGPU-a, 10, 200\nGPU-gone, 11, 5\n",
    )
    assert [(p.pid, p.used_memory) for p in snapshot.processes] == [(10, 300 * MI)]
    assert len(snapshot.errors) == 1 and "GPU-gone" in snapshot.errors[0]
    assert snapshot.partial  # the device list changed between the two calls


def test_first_line() -> None:
    assert first_line("", "\n  \nNVIDIA-SMI has failed\nmore\n") == "NVIDIA-SMI has failed"
    assert first_line(None, "") == ""


# --- end to end with a stand-in nvidia-smi ---------------------------------------------


STAND_IN = """\
#!{python}
# A stand-in nvidia-smi: answers the two CSV queries from files, logs what it was given.
import json, os, sys
config = json.load(open({config!r}))
with open(config["log"], "a") as log:
    log.write(json.dumps({{"bypass": os.environ.get("GENV_BYPASS"), "argv": sys.argv[1:]}}) + "\\n")
query = "apps" if any(a.startswith("--query-compute-apps") for a in sys.argv) else "gpus"
answer = config.get(query) or config.get("all") or {{}}
sys.stdout.write(answer.get("stdout", ""))
sys.stderr.write(answer.get("stderr", ""))
sys.exit(answer.get("rc", 0))
"""


class StandIn:
    """Writes the stand-in and its answers; reads back what it was called with."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config = folder / "config.json"
        self.log = folder / "calls.log"
        script = folder / "nvidia-smi"
        script.write_text(
            textwrap.dedent(STAND_IN).format(python=sys.executable, config=str(self.config))
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.answer()

    def answer(self, **answers: dict[str, object]) -> None:
        self.config.write_text(json.dumps({"log": str(self.log), **answers}))

    def calls(self) -> list[dict[str, object]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StandIn:
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}:/usr/bin:/bin")
    monkeypatch.delenv("GENV_BYPASS", raising=False)
    return StandIn(folder)


def test_end_to_end(stand_in: StandIn) -> None:
    gpus, apps = sample("a100-sxm4-80gb-x8")
    stand_in.answer(gpus={"stdout": gpus}, apps={"stdout": apps})
    snapshot = NvidiaSmiBackend().snapshot()
    assert len(snapshot.devices) == 8
    assert len(snapshot.processes) == 4
    calls = stand_in.calls()
    assert [call["bypass"] for call in calls] == ["1", "1"]
    assert calls[0]["argv"] == [
        "--query-gpu=index,uuid,name,memory.total,memory.used",
        "--format=csv,noheader,nounits",
    ]
    assert calls[1]["argv"] == [
        "--query-compute-apps=gpu_uuid,pid,used_gpu_memory",
        "--format=csv,noheader,nounits",
    ]


def test_without_processes_runs_one_query(stand_in: StandIn) -> None:
    gpus, _ = sample("t4-single-idle")
    stand_in.answer(gpus={"stdout": gpus})
    snapshot = NvidiaSmiBackend().snapshot(processes=False)
    assert len(snapshot.devices) == 1
    assert len(stand_in.calls()) == 1


def test_driver_failure_is_one_line_with_nvidia_smis_words(stand_in: StandIn) -> None:
    stand_in.answer(
        all={
            "stdout": "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
            "driver. Make sure that the latest NVIDIA driver is installed and running.\n\n",
            "rc": 9,
        }
    )
    with pytest.raises(BackendError) as raised:
        NvidiaSmiBackend().snapshot()
    message = str(raised.value)
    assert "\n" not in message
    assert "exit 9" in message
    assert "couldn't communicate with the NVIDIA driver" in message


def test_stderr_is_preferred(stand_in: StandIn) -> None:
    stand_in.answer(all={"stdout": "junk\n", "stderr": "\nFailed to initialize NVML\n", "rc": 255})
    with pytest.raises(BackendError, match="Failed to initialize NVML"):
        NvidiaSmiBackend().snapshot()


def test_no_devices_is_an_empty_machine(stand_in: StandIn) -> None:
    stand_in.answer(all={"stdout": "No devices were found\n", "rc": 6})
    snapshot = NvidiaSmiBackend().snapshot()
    assert snapshot.devices == () and snapshot.processes == () and snapshot.errors == ()


def test_failing_process_query_is_partial_not_fatal(stand_in: StandIn) -> None:
    gpus, _ = sample("t4-single-idle")
    stand_in.answer(gpus={"stdout": gpus}, apps={"stderr": "Unknown Error\n", "rc": 15})
    snapshot = NvidiaSmiBackend().snapshot()
    assert len(snapshot.devices) == 1
    assert snapshot.processes == ()
    assert len(snapshot.errors) == 1 and "Unknown Error" in snapshot.errors[0]
    assert snapshot.partial  # the processes are unknown, not absent


def test_missing_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendError) as raised:
        NvidiaSmiBackend().snapshot()
    message = str(raised.value)
    assert "\n" not in message and "not found" in message and "GENV_GPU_BACKEND=fake" in message


def test_not_executable(stand_in: StandIn) -> None:
    (stand_in.folder / "nvidia-smi").chmod(0o644)
    with pytest.raises(BackendError) as raised:
        NvidiaSmiBackend(executable=str(stand_in.folder / "nvidia-smi")).snapshot()
    assert "\n" not in str(raised.value)


def test_hanging_nvidia_smi_times_out(tmp_path: Path) -> None:
    script = tmp_path / "nvidia-smi"
    script.write_text('#!/bin/sh\nsleep 30 &\necho $! > "$0.child"\nwait\n')
    script.chmod(0o755)
    started = time.monotonic()
    with pytest.raises(BackendError, match="did not answer within 0.2 seconds"):
        NvidiaSmiBackend(executable=str(script), timeout=0.2).snapshot()
    assert time.monotonic() - started < 5
    # its whole process group was killed: the child it started too
    child = int(Path(f"{script}.child").read_text())
    try:
        descriptor = os.pidfd_open(child)
    except ProcessLookupError:
        return  # gone and reaped already
    try:
        assert select.select([descriptor], [], [], 10)[0], "the child still runs"
    finally:
        os.close(descriptor)


def test_one_deadline_for_both_queries(stand_in: StandIn, tmp_path: Path) -> None:
    """The process query gets what the device query left of the deadline: a hang there
    makes the view partial, within the one limit."""
    gpus, _ = sample("t4-single-idle")
    slow = tmp_path / "slow-nvidia-smi"
    slow.write_text(
        '#!/bin/sh\ncase "$1" in --query-gpu*) cat '
        + str(SAMPLES / "t4-single-idle.gpus.csv")
        + " ;; *) exec sleep 30 ;; esac\n"
    )
    slow.chmod(0o755)
    started = time.monotonic()
    snapshot = NvidiaSmiBackend(executable=str(slow), timeout=0.5).snapshot()
    assert time.monotonic() - started < 5
    assert len(snapshot.devices) == 1 and snapshot.partial
    assert "did not answer" in snapshot.errors[-1]


@pytest.mark.parametrize(("value", "expected"), [("", 10.0), ("2.5", 2.5), (" 30 ", 30.0)])
def test_timeout_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: float
) -> None:
    monkeypatch.setenv("GENV_NVIDIA_SMI_TIMEOUT", value)
    assert NvidiaSmiBackend().timeout == expected
    assert NvidiaSmiBackend(timeout=1).timeout == 1


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "1e9"])
def test_a_bad_timeout_is_one_line(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("GENV_NVIDIA_SMI_TIMEOUT", value)
    with pytest.raises(BackendError) as raised:
        NvidiaSmiBackend()
    assert "GENV_NVIDIA_SMI_TIMEOUT" in str(raised.value) and "\n" not in str(raised.value)
