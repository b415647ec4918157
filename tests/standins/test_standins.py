"""The stand-ins for NVIDIA's tools: standins/nvidia-smi and standins/libnvidia-ml.

Both present the simulated machine described by the JSON file named in GENV_FAKE_MACHINE,
read through the flat form genv's writer puts beside it (so genv's parser is the only one).
NVML is exercised through nvidia-ml-py (pynvml) in a child process, because the library is
found through LD_LIBRARY_PATH, which must be set before a process starts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from genv.backends.machine_file import compile_machine
from genv.backends.machine_file import write_machine as write_entries
from genv.system import procfs

ROOT = Path(__file__).resolve().parents[2]
STANDINS = ROOT / "standins"
NVIDIA_SMI = STANDINS / "nvidia-smi"  # the launcher: builds standins/build/nvidia-smi
BUILD = STANDINS / "build.sh"
BUILD_NVML = STANDINS / "build-nvml.sh"
# genv 1.4.3's shim, from the peer tests/compat/peers.py installs (or an older /opt/genv-peer)
PEER_SHIM = next(
    (
        found
        for venv in (ROOT / ".peer" / "genv-1.4.3", Path("/opt/genv-peer"))
        for found in sorted(venv.glob("lib/python3*/site-packages/genv/shims/nvidia-smi"))
    ),
    Path("/nonexistent/genv-1.4.3/shims/nvidia-smi"),
)

MIB = 1024 * 1024
GIB = 1024 * MIB
NOT_MIG = 0xFFFFFFFF


def default_uuid(index: int) -> str:
    return f"GPU-00000000-0000-0000-0000-{index:012x}"


def write_machine(path: Path, description: dict | str) -> None:
    """Writes the description text as it is (atomically), then its flat form, as
    ``python -m genv.backends.machine_file`` does for a file written by hand."""
    text = description if isinstance(description, str) else json.dumps(description)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    compile_machine(path)


# ---- fixtures ------------------------------------------------------------------------------

SMI = {"path": NVIDIA_SMI}


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both stand-ins freshly built by build.sh (the build must be free of warnings)."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler (cc) to build the stand-ins")
    out = tmp_path_factory.mktemp("standins")
    result = subprocess.run(
        ["sh", str(BUILD), str(out)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr
    assert (out / "libnvidia-ml.so.1").is_file() and (out / "nvidia-smi").is_file()
    return out


@pytest.fixture(autouse=True)
def compiled_smi(built: Path):
    """``smi()`` runs the freshly built nvidia-smi."""
    SMI["path"] = built / "nvidia-smi"
    yield
    SMI["path"] = NVIDIA_SMI


@pytest.fixture(scope="session")
def nvml_dir(built: Path) -> Path:
    return built


@pytest.fixture
def machine(tmp_path: Path) -> Path:
    return tmp_path / "machine.json"


@pytest.fixture
def sleepers():
    """Starts real processes to put on the simulated GPUs; all are killed at the end."""
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        process = subprocess.Popen(["sleep", "300"])
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def kill(process: subprocess.Popen) -> None:
    """Kills and reaps a process: a zombie still answers kill(pid, 0)."""
    process.send_signal(signal.SIGKILL)
    process.wait()


def dead_pid() -> int:
    """A pid that no process has now."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# ---- NVML through pynvml -------------------------------------------------------------------

# Runs in the child. Each line on stdin is a command; the answer is one JSON line.
PROBE = textwrap.dedent(
    """
    import ctypes, json, sys
    import pynvml as n

    def attempt(call, *args):
        try:
            return call(*args)
        except n.NVMLError as error:
            return {"error": type(error).__name__, "value": error.value, "text": str(error)}

    def procs(call, handle):
        result = attempt(call, handle)
        if isinstance(result, dict):
            return result
        return [[p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId] for p in result]

    def device(handle):
        if isinstance(handle, dict):
            return handle
        memory = attempt(n.nvmlDeviceGetMemoryInfo, handle)
        memory2 = attempt(n.nvmlDeviceGetMemoryInfo, handle, n.nvmlMemory_v2)
        return {
            "index": attempt(n.nvmlDeviceGetIndex, handle),
            "uuid": attempt(n.nvmlDeviceGetUUID, handle),
            "name": attempt(n.nvmlDeviceGetName, handle),
            "memory": memory if isinstance(memory, dict)
            else [memory.total, memory.free, memory.used],
            "memory_v2": memory2 if isinstance(memory2, dict)
            else [memory2.total, memory2.reserved, memory2.free, memory2.used],
            "compute": procs(n.nvmlDeviceGetComputeRunningProcesses, handle),
            "compute_v2": procs(n.nvmlDeviceGetComputeRunningProcesses_v2, handle),
            "graphics": procs(n.nvmlDeviceGetGraphicsRunningProcesses, handle),
            "mps": procs(n.nvmlDeviceGetMPSComputeRunningProcesses, handle),
        }

    handles = {}
    for line in sys.stdin:
        command = line.split()
        if command[0] == "init":
            answer = attempt(n.nvmlInit)
        elif command[0] == "shutdown":
            answer = attempt(n.nvmlShutdown)
        elif command[0] == "library":
            # which file the dynamic linker mapped for libnvidia-ml.so.1
            with open("/proc/self/maps") as maps:
                answer = sorted({l.split()[-1] for l in maps if "libnvidia-ml" in l})
        elif command[0] == "system":
            answer = {
                "driver": attempt(n.nvmlSystemGetDriverVersion),
                "nvml": attempt(n.nvmlSystemGetNVMLVersion),
                "cuda": attempt(n.nvmlSystemGetCudaDriverVersion),
                "cuda_v2": attempt(n.nvmlSystemGetCudaDriverVersion_v2),
            }
        elif command[0] == "snapshot":
            count = attempt(n.nvmlDeviceGetCount)
            if isinstance(count, dict):
                answer = {"count": count}
            else:
                handles = {i: attempt(n.nvmlDeviceGetHandleByIndex, i) for i in range(count)}
                answer = {"count": count, "devices": [device(h) for h in handles.values()]}
        elif command[0] == "old-handle":
            # a handle from the last snapshot, used after the description changed
            answer = device(handles[int(command[1])])
        elif command[0] == "by-uuid":
            handle = attempt(n.nvmlDeviceGetHandleByUUID, command[1])
            answer = device(handle)
        elif command[0] == "raw":
            # the C calls themselves: name, buffer records, record size, count in
            call = getattr(n.nvmlLib, command[1])
            records, size, count = int(command[2]), int(command[3]), int(command[4])
            handle = n.nvmlDeviceGetHandleByIndex(0)
            buffer = (ctypes.c_char * (records * size))() if records else None
            c_count = ctypes.c_uint(count)
            ret = call(handle, ctypes.byref(c_count), buffer)
            rows = []
            for i in range(min(c_count.value, records) if ret == 0 else 0):
                chunk = bytes(buffer[i * size:(i + 1) * size])
                pid = int.from_bytes(chunk[0:4], "little")
                used = int.from_bytes(chunk[8:16], "little")
                rows.append([pid, used] + (
                    [int.from_bytes(chunk[16:20], "little"),
                     int.from_bytes(chunk[20:24], "little")] if size == 24 else []))
            answer = {"ret": ret, "count": c_count.value, "rows": rows}
        else:
            answer = {"unknown command": command}
        print(json.dumps(answer), flush=True)
    """
)


class Probe:
    """A child Python with pynvml, LD_LIBRARY_PATH and GENV_FAKE_MACHINE set at its start."""

    def __init__(self, nvml_dir: Path, machine: Path | None, extra_env: dict | None = None):
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(nvml_dir)] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        )
        env.pop("GENV_FAKE_MACHINE", None)
        if machine is not None:
            env["GENV_FAKE_MACHINE"] = str(machine)
        env.update(extra_env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-c", PROBE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def ask(self, command: str):
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the probe died (exit {self.process.wait()})"
        return json.loads(line)

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=30)
        if self.process.stdout:
            self.process.stdout.close()


@pytest.fixture
def probe(nvml_dir: Path, machine: Path):
    if importlib.util.find_spec("pynvml") is None:
        pytest.skip("nvidia-ml-py (pynvml) is not installed")
    probes: list[Probe] = []

    def start(env: dict | None = None, description: Path | None = machine) -> Probe:
        started = Probe(nvml_dir, description, env)
        probes.append(started)
        return started

    yield start
    for started in probes:
        started.close()


def test_pynvml_loads_the_stand_in(probe, machine: Path, nvml_dir: Path) -> None:
    write_machine(machine, {"devices": [{"total_memory": "80gi"}]})
    nvml = probe()
    assert nvml.ask("init") is None
    mapped = nvml.ask("library")
    assert mapped == [str((nvml_dir / "libnvidia-ml.so.1").resolve())]
    assert nvml.ask("system") == {
        "driver": "535.183.01",
        "nvml": "12.535.183.01",
        "cuda": 12020,
        "cuda_v2": 12020,
    }
    assert nvml.ask("shutdown") is None
    assert nvml.ask("shutdown")["error"] == "NVMLError_Uninitialized"


def test_devices(probe, machine: Path) -> None:
    write_machine(
        machine,
        {
            "devices": [
                {"total_memory": "80gi"},
                {"total_memory": 16000000000, "uuid": "GPU-1234", "name": "Tesla \u00e9"},
                {"total_memory": "1000m", "uuid": None, "name": None, "extra": {"x": [1, {}]}},
            ],
            "comment": ["unknown keys are skipped", 1.5e3, True, None],
        },
    )
    nvml = probe()
    assert nvml.ask("init") is None
    snapshot = nvml.ask("snapshot")
    assert snapshot["count"] == 3
    devices = snapshot["devices"]
    assert [d["index"] for d in devices] == [0, 1, 2]
    assert [d["uuid"] for d in devices] == [default_uuid(0), "GPU-1234", default_uuid(2)]
    assert [d["name"] for d in devices] == ["Simulated GPU", "Tesla \u00e9", "Simulated GPU"]
    assert devices[0]["memory"] == [80 * GIB, 80 * GIB, 0]
    assert devices[0]["memory_v2"] == [80 * GIB, 0, 80 * GIB, 0]
    assert devices[1]["memory"] == [16000000000, 16000000000, 0]
    assert devices[2]["memory"] == [1000**3, 1000**3, 0]
    for device in devices:
        for kind in ("compute", "compute_v2", "graphics", "mps"):
            assert device[kind] == []
    assert nvml.ask("by-uuid GPU-1234")["index"] == 1
    assert nvml.ask("by-uuid GPU-nope")["error"] == "NVMLError_NotFound"


def test_processes(probe, machine: Path, sleepers) -> None:
    first, second, third = sleepers(), sleepers(), sleepers()
    write_machine(
        machine,
        {
            "devices": [{"total_memory": "16gi"}, {"total_memory": "16gi"}],
            "processes": [
                {"pid": first.pid, "device": 0, "used_memory": "7295mi"},
                {"pid": second.pid, "device": 0, "used_memory": 1048576},
                {"pid": third.pid, "device": 1, "used_memory": "2g"},
                {"pid": dead_pid(), "device": 1, "used_memory": "1gi"},
                {"pid": first.pid, "device": 7, "used_memory": "1gi"},
            ],
        },
    )
    nvml = probe()
    assert nvml.ask("init") is None
    devices = nvml.ask("snapshot")["devices"]
    used0 = 7295 * MIB + MIB
    assert devices[0]["compute"] == [
        [first.pid, 7295 * MIB, NOT_MIG, NOT_MIG],
        [second.pid, MIB, NOT_MIG, NOT_MIG],
    ]
    assert devices[0]["compute_v2"] == devices[0]["compute"]
    assert devices[0]["memory"] == [16 * GIB, 16 * GIB - used0, used0]
    assert devices[0]["memory_v2"] == [16 * GIB, 0, 16 * GIB - used0, used0]
    assert devices[1]["compute"] == [[third.pid, 2 * 1000**3, NOT_MIG, NOT_MIG]]
    assert devices[1]["memory"] == [16 * GIB, 16 * GIB - 2 * 1000**3, 2 * 1000**3]
    for device in devices:
        assert device["graphics"] == []
        assert device["mps"] == []

    # a process that ends drops out, without any change to the description
    kill(second)
    devices = nvml.ask("snapshot")["devices"]
    assert devices[0]["compute"] == [[first.pid, 7295 * MIB, NOT_MIG, NOT_MIG]]
    assert devices[0]["memory"][2] == 7295 * MIB


def test_two_call_protocol(probe, machine: Path, sleepers) -> None:
    pids = [sleepers().pid for _ in range(3)]
    write_machine(
        machine,
        {
            "devices": [{"total_memory": "16gi"}],
            "processes": [{"pid": pid, "device": 0, "used_memory": "1mi"} for pid in pids],
        },
    )
    nvml = probe()
    assert nvml.ask("init") is None
    insufficient, success, invalid = 7, 0, 2
    for name, size in [
        ("nvmlDeviceGetComputeRunningProcesses", 16),
        ("nvmlDeviceGetComputeRunningProcesses_v2", 24),
        ("nvmlDeviceGetComputeRunningProcesses_v3", 24),
    ]:
        # ask the count with no buffer
        assert nvml.ask(f"raw {name} 0 {size} 0") == {"ret": insufficient, "count": 3, "rows": []}
        # a buffer too small
        assert nvml.ask(f"raw {name} 2 {size} 2") == {"ret": insufficient, "count": 3, "rows": []}
        # a count with no buffer
        assert nvml.ask(f"raw {name} 0 {size} 5")["ret"] == invalid
        # a big enough buffer: the count becomes the number written
        answer = nvml.ask(f"raw {name} 8 {size} 8")
        assert answer["ret"] == success
        assert answer["count"] == 3
        tail = [NOT_MIG, NOT_MIG] if size == 24 else []
        assert answer["rows"] == [[pid, MIB, *tail] for pid in pids]
    for name in (
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
        "nvmlDeviceGetMPSComputeRunningProcesses_v3",
    ):
        # nothing to report: a count of 0 with no buffer is a success
        assert nvml.ask(f"raw {name} 0 24 0") == {"ret": success, "count": 0, "rows": []}


def test_description_is_read_again(probe, machine: Path, sleepers) -> None:
    sleeper = sleepers()
    write_machine(machine, {"devices": [{"total_memory": "8gi"}]})
    nvml = probe()
    assert nvml.ask("init") is None
    assert nvml.ask("snapshot")["count"] == 1

    # a device added while the program runs shows up
    write_machine(
        machine,
        {
            "devices": [{"total_memory": "8gi"}, {"total_memory": "24gi", "uuid": "GPU-new"}],
            "processes": [{"pid": sleeper.pid, "device": 1, "used_memory": "3gi"}],
        },
    )
    snapshot = nvml.ask("snapshot")
    assert snapshot["count"] == 2
    assert snapshot["devices"][1]["uuid"] == "GPU-new"
    assert snapshot["devices"][1]["compute"] == [[sleeper.pid, 3 * GIB, NOT_MIG, NOT_MIG]]

    # a device removed: its handle is lost; the others keep theirs, with the new index
    write_machine(machine, {"devices": [{"total_memory": "24gi", "uuid": "GPU-new"}]})
    lost = nvml.ask("old-handle 0")
    assert {answer["error"] for answer in lost.values()} == {"NVMLError_GpuIsLost"}
    moved = nvml.ask("old-handle 1")
    assert moved["index"] == 0
    assert moved["uuid"] == "GPU-new"
    assert nvml.ask("snapshot")["count"] == 1

    # a broken description is an error; the last good one is kept for the handles
    write_machine(machine, '{"devices": [')
    assert nvml.ask("snapshot")["count"]["error"] == "NVMLError_Unknown"
    machine.unlink()
    assert nvml.ask("snapshot")["count"]["error"] == "NVMLError_DriverNotLoaded"
    write_machine(machine, {"devices": [{"total_memory": "1gi"}]})
    assert nvml.ask("snapshot")["count"] == 1


@pytest.mark.parametrize("setup", ["unset", "missing", "corrupt"])
def test_no_description_at_init(probe, machine: Path, setup: str) -> None:
    if setup == "corrupt":
        write_machine(machine, "{not json")
    nvml = probe(description=None if setup == "unset" else machine)
    answer = nvml.ask("init")
    assert answer["error"] == "NVMLError_DriverNotLoaded"
    assert answer["text"] == "Driver Not Loaded"
    assert nvml.ask("snapshot")["count"]["error"] == "NVMLError_Uninitialized"


# ---- the same descriptions, valid and invalid, for both stand-ins -------------------------

VALID = [
    # (description text, [(uuid, name, total bytes)])
    ('{"devices": [{"total_memory": "4g"}]}', [(default_uuid(0), "Simulated GPU", 4 * 1000**3)]),
    ('{"devices": [{"total_memory": "42MI"}]}', [(default_uuid(0), "Simulated GPU", 42 * MIB)]),
    ('{"devices": [{"total_memory": 44040192}]}', [(default_uuid(0), "Simulated GPU", 44040192)]),
    ('{"devices": [{"total_memory": "44040192"}]}', [(default_uuid(0), "Simulated GPU", 44040192)]),
    ('{"devices": [{"total_memory": " 3 ki "}]}', [(default_uuid(0), "Simulated GPU", 3072)]),
    ('{"devices": [{"total_memory": "5b"}]}', [(default_uuid(0), "Simulated GPU", 5)]),
    (
        '{"devices": [{"total_memory": "7k", "uuid": " GPU-\\u0041 ", "name": "  "}]}',
        [("GPU-A", "Simulated GPU", 7000)],
    ),
    pytest.param(
        '{"devices": [{"total_memory": "1k", "name": "' + "\u00e9" * 60 + '"}]}',
        [(default_uuid(0), "\u00e9" * 47, 1000)],  # cut to NVML's 95 bytes, whole characters
        id="long-name",
    ),
    (
        ' {"devices": [{"total_memory": "1gi"}], "processes": null} \n',
        [(default_uuid(0), "Simulated GPU", GIB)],
    ),
    (
        '{"devices": [{"total_memory": "1gi"}], "devices": [{"total_memory": "2gi"}]}',
        [(default_uuid(0), "Simulated GPU", 2 * GIB)],  # the last one counts, as in json
    ),
    (
        '{"x": {"y": [[], {}, "s\\"\\ud800", -1.5e-3, null, NaN, -Infinity]}, '
        '"devices": [{"total_memory": "1m"}]}',
        [(default_uuid(0), "Simulated GPU", 1000**2)],
    ),
    (
        '{"devices": [{"total_memory": "1m"}], "processes": ['
        '{"pid": 1, "device": 0}, {"pid": 1, "device": 5, "used_memory": null}]}',
        [(default_uuid(0), "Simulated GPU", 1000**2)],
    ),
    pytest.param(
        '{"devices": [{"total_memory": "1m"}], "processes": ['
        '{"pid": 99999999999, "device": 0, "used_memory": 1}]}',
        [(default_uuid(0), "Simulated GPU", 1000**2)],
        id="huge-pid",
    ),
    ('{"devices": []}', []),
]

INVALID = [
    "",
    "[]",
    "{}",
    '{"processes": []}',
    '\ufeff{"devices": []}',
    '{"devices": [{"total_memory": "80gi"}]',
    '{"devices": [{"total_memory": "80gi"}]} x',
    '{"devices": {}}',
    '{"devices": null}',
    '{"devices": [{}]}',
    '{"devices": [{"total_memory": null}]}',
    '{"devices": [{"total_memory": "80 gb"}]}',
    '{"devices": [{"total_memory": "-1"}]}',
    '{"devices": [{"total_memory": -1}]}',
    '{"devices": [{"total_memory": 1.5}]}',
    '{"devices": [{"total_memory": "1.5g"}]}',
    '{"devices": [{"total_memory": true}]}',
    '{"devices": [{"total_memory": "1g", "uuid": 3}]}',
    pytest.param(
        '{"devices": [{"total_memory": "1g", "uuid": "' + "x" * 96 + '"}]}', id="long-uuid"
    ),
    '{"devices": [{"total_memory": "1g", "uuid": "GPU-a"}, {"total_memory": 1, "uuid": "GPU-a"}]}',
    '{"devices": [{"total_memory": "1g"}, {"total_memory": 1, "uuid": "' + default_uuid(0) + '"}]}',
    '{"devices": [], "processes": [{"device": 0}]}',
    '{"devices": [], "processes": [{"pid": 1}]}',
    '{"devices": [], "processes": [{"pid": 0, "device": 0, "used_memory": 1}]}',
    '{"devices": [], "processes": [{"pid": -5, "device": 0, "used_memory": 1}]}',
    '{"devices": [], "processes": [{"pid": "1", "device": 0, "used_memory": 1}]}',
    '{"devices": [], "processes": [{"pid": 1.0, "device": 0, "used_memory": 1}]}',
    '{"devices": [], "processes": [{"pid": 1, "device": -1, "used_memory": 1}]}',
    '{"devices": [], "processes": [{"pid": 1, "device": 0, "used_memory": "lots"}]}',
    '{"devices": [], "processes": [{"pid": 1, "device": 0}, {"pid": 1, "device": 0}]}',
    '{"devices": [], "processes": {}}',
]


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_valid_descriptions_nvml(probe, machine: Path, text: str, expected) -> None:
    write_machine(machine, text)
    nvml = probe()
    assert nvml.ask("init") is None
    snapshot = nvml.ask("snapshot")
    assert [(d["uuid"], d["name"], d["memory"][0]) for d in snapshot["devices"]] == expected


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_valid_descriptions_smi(machine: Path, text: str, expected) -> None:
    write_machine(machine, text)
    result = smi(machine, "--query-gpu=uuid,name,memory.total", "--format=csv,noheader,nounits")
    if expected:
        assert result.returncode == 0, result.stderr
        assert result.stdout == "".join(f"{u}, {n}, {total // MIB}\n" for u, n, total in expected)
    else:
        assert (result.returncode, result.stdout) == (6, "No devices were found\n")


@pytest.mark.parametrize("text", INVALID)
def test_invalid_descriptions_nvml(probe, machine: Path, text: str) -> None:
    write_machine(machine, text)
    nvml = probe({"GENV_FAKE_NVML_DEBUG": "1"})
    assert nvml.ask("init")["error"] == "NVMLError_DriverNotLoaded"


@pytest.mark.parametrize("text", INVALID)
def test_invalid_descriptions_smi(machine: Path, text: str) -> None:
    write_machine(machine, text)
    result = smi(machine, "--query-gpu=index", "--format=csv")
    assert result.returncode == 9
    assert result.stdout == ""
    assert result.stderr.startswith("NVIDIA-SMI has failed because it couldn't communicate")


# ---- the three views of one machine agree: genv's fake backend, NVML, nvidia-smi ----------


def fake_backend(machine: Path):
    fake = pytest.importorskip("genv.backends.fake")
    return fake.FakeBackend(machine)


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_valid_descriptions_fake_backend(machine: Path, text: str, expected) -> None:
    write_machine(machine, text)
    snapshot = fake_backend(machine).snapshot()
    assert [(d.uuid, d.name, d.total_memory) for d in snapshot.devices] == expected


@pytest.mark.parametrize("text", INVALID)
def test_invalid_descriptions_fake_backend(machine: Path, text: str) -> None:
    from genv.backends.base import BackendError

    write_machine(machine, text)
    with pytest.raises(BackendError):
        fake_backend(machine).snapshot()


def zombie(sleepers) -> int:
    """A process that has ended but is not reaped yet (reaped at the end of the test)."""
    process = sleepers()
    os.kill(process.pid, signal.SIGKILL)
    stat = Path(f"/proc/{process.pid}/stat")
    for _ in range(1000):
        if stat.read_text().rpartition(")")[2].split()[0] == "Z":
            return process.pid
        time.sleep(0.005)
    raise AssertionError("the process did not become a zombie")


def three_views(probe, machine: Path) -> tuple[dict, dict, dict]:
    """What genv's fake backend, NVML and nvidia-smi report, in one shape (memory in MiB)."""
    snapshot = fake_backend(machine).snapshot()

    def mib(amount):
        return None if amount is None else amount // MIB

    backend = {
        "devices": [
            (d.index, d.uuid, d.name, mib(d.total_memory), mib(d.used_memory))
            for d in snapshot.devices
        ],
        "processes": sorted((p.device_uuid, p.pid, mib(p.used_memory)) for p in snapshot.processes),
    }
    nvml = probe()
    assert nvml.ask("init") is None
    devices = nvml.ask("snapshot")["devices"]
    through_nvml = {
        "devices": [
            (d["index"], d["uuid"], d["name"], mib(d["memory"][0]), mib(d["memory"][2]))
            for d in devices
        ],
        "processes": sorted((d["uuid"], p[0], mib(p[1])) for d in devices for p in d["compute"]),
    }
    gpus = smi(
        machine,
        "--query-gpu=index,uuid,name,memory.total,memory.used",
        "--format=csv,noheader,nounits",
    )
    apps = smi(
        machine,
        "--query-compute-apps=gpu_uuid,pid,used_gpu_memory",
        "--format=csv,noheader,nounits",
    )
    assert gpus.returncode == apps.returncode == 0, gpus.stderr + apps.stderr
    rows = [line.split(", ") for line in gpus.stdout.splitlines()]
    through_smi = {
        "devices": [(int(i), u, n, int(t), int(used)) for i, u, n, t, used in rows],
        "processes": sorted(
            (u, int(pid), None if used == "[N/A]" else int(used))
            for u, pid, used in (line.split(", ") for line in apps.stdout.splitlines())
        ),
    }
    return backend, through_nvml, through_smi


def test_three_views_agree(probe, machine: Path, sleepers) -> None:
    a, b, c = sleepers(), sleepers(), sleepers()
    write_machine(
        machine,
        {
            "devices": [
                {"total_memory": "80gi"},
                {"total_memory": "16g", "uuid": " GPU-abc ", "name": "Tesla T4"},
                {"total_memory": 1000**3},
            ],
            "processes": [
                {"pid": a.pid, "device": 0, "used_memory": "7295mi"},
                {"pid": b.pid, "device": 0, "used_memory": 1500000000},
                {"pid": c.pid, "device": 1},  # memory unknown
                {"pid": a.pid, "device": 2, "used_memory": "100m"},
                {"pid": zombie(sleepers), "device": 1, "used_memory": "1gi"},
                {"pid": dead_pid(), "device": 2, "used_memory": "1gi"},
            ],
        },
    )
    backend, through_nvml, through_smi = three_views(probe, machine)
    assert through_nvml == backend
    assert through_smi == backend
    assert backend == {
        "devices": [
            (0, default_uuid(0), "Simulated GPU", 81920, 8725),
            (1, "GPU-abc", "Tesla T4", 15258, 0),
            (2, default_uuid(2), "Simulated GPU", 953, 95),
        ],
        "processes": sorted(
            [
                (default_uuid(0), a.pid, 7295),
                (default_uuid(0), b.pid, 1430),
                ("GPU-abc", c.pid, None),
                (default_uuid(2), a.pid, 95),
            ]
        ),
    }


def test_default_uuids_agree_beyond_ten_devices(probe, machine: Path) -> None:
    """Default uuids end in the index as 12 hex digits, in every view (index 10: ...00a)."""
    write_machine(machine, {"devices": [{"total_memory": "1gi"}] * 11})
    backend, through_nvml, through_smi = three_views(probe, machine)
    uuids = [device[1] for device in through_nvml["devices"]]
    assert uuids[10] == "GPU-00000000-0000-0000-0000-00000000000a"
    assert [device[1] for device in through_smi["devices"]] == uuids
    assert [device[1] for device in backend["devices"]] == uuids


# Prints genv's own backend's snapshot of the machine (run with the stand-ins in place).
BACKEND_SNAPSHOT = textwrap.dedent(
    """
    import json, sys
    if sys.argv[1] == "fake":
        from genv.backends.fake import FakeBackend as Backend
    elif sys.argv[1] == "nvml":
        from genv.backends.nvml import NvmlBackend as Backend
    else:
        from genv.backends.nvidia_smi import NvidiaSmiBackend as Backend
    snapshot = Backend().snapshot()
    print(json.dumps({
        "devices": [[d.index, d.uuid, d.name, d.total_memory, d.used_memory]
                    for d in snapshot.devices],
        "processes": sorted([p.pid, p.device_index, p.device_uuid, p.used_memory]
                            for p in snapshot.processes),
        "errors": list(snapshot.errors),
        "partial": snapshot.partial,
    }))
    """
)


def test_genv_backends_over_the_stand_ins(nvml_dir: Path, machine: Path, sleepers) -> None:
    """genv's NVML and nvidia-smi backends, run over the stand-ins, see what its fake one does."""
    for module in ("genv.backends.fake", "genv.backends.nvml", "genv.backends.nvidia_smi"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not there")
    a, b = sleepers(), sleepers()
    write_entries(
        machine,
        [{"total_memory": "80gi"}, {"total_memory": "16g", "uuid": "GPU-x"}],
        [
            {"pid": a.pid, "device": 1, "used_memory": "3gi"},
            {"pid": b.pid, "device": 0},
            {"pid": dead_pid(), "device": 0, "used_memory": "1gi"},
        ],
    )
    environment = dict(os.environ)
    for name in ("GENV_GPU_BACKEND", "GENV_BYPASS"):
        environment.pop(name, None)
    environment.update(
        GENV_FAKE_MACHINE=str(machine),
        LD_LIBRARY_PATH=str(nvml_dir),
        PATH=f"{nvml_dir}{os.pathsep}{environment.get('PATH', '')}",
    )

    def snapshot(backend: str) -> dict:
        result = subprocess.run(
            [sys.executable, "-c", BACKEND_SNAPSHOT, backend],
            capture_output=True,
            text=True,
            env=environment,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    fake = snapshot("fake")
    assert fake["errors"] == []
    assert len(fake["processes"]) == 2
    assert snapshot("nvml") == fake

    def in_mib(view: dict) -> dict:
        return {
            "devices": [
                [i, u, n, t // MIB, None if used is None else used // MIB]
                for i, u, n, t, used in view["devices"]
            ],
            "processes": [
                [pid, i, u, None if used is None else used // MIB]
                for pid, i, u, used in view["processes"]
            ],
            "errors": view["errors"],
        }

    assert in_mib(snapshot("nvidia-smi")) == in_mib(fake)


def test_zombie_and_unknown_memory(probe, machine: Path, sleepers) -> None:
    live = sleepers()
    write_machine(
        machine,
        {
            "devices": [{"total_memory": "8gi"}],
            "processes": [
                {"pid": zombie(sleepers), "device": 0, "used_memory": "1gi"},
                {"pid": live.pid, "device": 0, "used_memory": None},
            ],
        },
    )
    nvml = probe()
    assert nvml.ask("init") is None
    device = nvml.ask("snapshot")["devices"][0]
    # pynvml turns NVML's "not available" (2**64 - 1) into None
    assert device["compute"] == [[live.pid, None, NOT_MIG, NOT_MIG]]
    assert device["memory"] == [8 * GIB, 8 * GIB, 0]

    result = smi(machine, "--query-compute-apps=pid,used_gpu_memory", "--format=csv")
    assert result.stdout == f"pid, used_gpu_memory [MiB]\n{live.pid}, [N/A]\n"
    table = smi(machine).stdout.splitlines()
    assert f"|    0   N/A  N/A  {live.pid:>8}      C   {'sleep':<28}      N/A    |" in table


# ---- nvidia-smi ----------------------------------------------------------------------------


def smi(machine: Path | None, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = dict(os.environ)
    environment.pop("GENV_FAKE_MACHINE", None)
    if machine is not None:
        environment["GENV_FAKE_MACHINE"] = str(machine)
    environment.update(env or {})
    return subprocess.run(
        [str(SMI["path"]), *args], capture_output=True, text=True, env=environment, check=False
    )


@pytest.fixture
def two_gpus(machine: Path, sleepers):
    """Two devices; device 0 runs two processes, device 1 one; a dead pid is left out."""
    a, b, c = sleepers(), sleepers(), sleepers()
    write_machine(
        machine,
        {
            "devices": [
                {"total_memory": "80gi"},
                {"total_memory": "16g", "uuid": "GPU-abc", "name": "Tesla T4"},
            ],
            "processes": [
                {"pid": a.pid, "device": 0, "used_memory": "7295mi"},
                {"pid": b.pid, "device": 0, "used_memory": "1500000000"},
                {"pid": dead_pid(), "device": 0, "used_memory": "1gi"},
                {"pid": c.pid, "device": 1, "used_memory": "42mi"},
            ],
        },
    )
    return a.pid, b.pid, c.pid


def test_query_gpu(machine: Path, two_gpus) -> None:
    used0 = (7295 * MIB + 1500000000) // MIB  # the sum in bytes, rounded down: 8725
    total1 = 16 * 1000**3 // MIB
    result = smi(
        machine,
        "--query-gpu=index,uuid,name,memory.total,memory.used,memory.free,"
        "utilization.gpu,temperature.gpu",
        "--format=csv",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "index, uuid, name, memory.total [MiB], memory.used [MiB], memory.free [MiB], "
        "utilization.gpu [%], temperature.gpu\n"
        f"0, {default_uuid(0)}, Simulated GPU, 81920 MiB, {used0} MiB, "
        f"{(80 * GIB - 7295 * MIB - 1500000000) // MIB} MiB, 0 %, 30\n"
        f"1, GPU-abc, Tesla T4, {total1} MiB, 42 MiB, {(16 * 1000**3 - 42 * MIB) // MIB} MiB, "
        "0 %, 30\n"
    )

    result = smi(machine, "--query-gpu=index,memory.total", "--format=csv,nounits")
    assert result.stdout == f"index, memory.total [MiB]\n0, 81920\n1, {total1}\n"
    result = smi(machine, "--query-gpu=memory.used,index", "--format=csv,noheader")
    assert result.stdout == f"{used0} MiB, 0\n42 MiB, 1\n"
    result = smi(machine, "--query-gpu", "uuid,index", "--format", "csv,noheader,nounits")
    assert result.stdout == f"{default_uuid(0)}, 0\nGPU-abc, 1\n"
    # aliases, count, the bus id, and -i
    result = smi(
        machine, "--query-gpu=gpu_name,count,pci.bus_id", "--format=csv,noheader", "-i", "1"
    )
    assert result.stdout == "Tesla T4, 1, 00000000:02:00.0\n"


def test_genv_1_4_3_commands(machine: Path, two_gpus) -> None:
    """The exact commands genv 1.4.3 runs, and how it splits their output."""
    a, b, c = two_gpus
    result = smi(machine, "--query-gpu=uuid,index", "--format=csv,noheader,nounits")
    assert dict(line.split(", ") for line in result.stdout.splitlines()) == {
        default_uuid(0): "0",
        "GPU-abc": "1",
    }
    result = smi(
        machine,
        "--query-compute-apps=gpu_uuid,pid,used_gpu_memory",
        "--format=csv,noheader,nounits",
    )
    assert result.stdout == (
        f"{default_uuid(0)}, {a}, 7295\n"
        f"{default_uuid(0)}, {b}, {1500000000 // MIB}\n"
        f"GPU-abc, {c}, 42\n"
    )
    result = smi(machine, "--query-gpu=memory.total", "--format=csv,noheader,nounits")
    assert result.stdout == f"81920\n{16 * 1000**3 // MIB}\n"
    result = smi(
        machine,
        "--query-gpu=index,utilization.gpu,temperature.gpu,memory.used,memory.total",
        "--format=csv,noheader,nounits",
    )
    used0 = (7295 * MIB + 1500000000) // MIB
    assert result.stdout == f"0, 0, 30, {used0}, 81920\n1, 0, 30, 42, {16 * 1000**3 // MIB}\n"


def test_query_compute_apps(machine: Path, two_gpus) -> None:
    a, b, c = two_gpus
    result = smi(
        machine,
        "--query-compute-apps=gpu_uuid,pid,used_gpu_memory,process_name,gpu_bus_id",
        "--format=csv",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "gpu_uuid, pid, used_gpu_memory [MiB], process_name, gpu_bus_id\n"
        f"{default_uuid(0)}, {a}, 7295 MiB, sleep, 00000000:01:00.0\n"
        f"{default_uuid(0)}, {b}, {1500000000 // MIB} MiB, sleep, 00000000:01:00.0\n"
        f"GPU-abc, {c}, 42 MiB, sleep, 00000000:02:00.0\n"
    )
    result = smi(machine, "--query-compute-apps=pid,name,used_memory", "--format=csv", "--id=1")
    assert result.stdout == f"pid, process_name, used_gpu_memory [MiB]\n{c}, sleep, 42 MiB\n"


def test_query_compute_apps_none(machine: Path) -> None:
    write_machine(machine, {"devices": [{"total_memory": "8gi"}]})
    result = smi(machine, "--query-compute-apps=pid", "--format=csv")
    assert (result.returncode, result.stdout) == (0, "pid\n")
    result = smi(machine, "--query-compute-apps=pid", "--format=csv,noheader")
    assert (result.returncode, result.stdout) == (0, "")


def test_killed_process_drops_out(machine: Path, sleepers) -> None:
    first, second = sleepers(), sleepers()
    write_machine(
        machine,
        {
            "devices": [{"total_memory": "8gi"}],
            "processes": [
                {"pid": first.pid, "device": 0, "used_memory": "1gi"},
                {"pid": second.pid, "device": 0, "used_memory": "2gi"},
            ],
        },
    )
    query = ("--query-compute-apps=pid,used_gpu_memory", "--format=csv,noheader,nounits")
    assert smi(machine, *query).stdout == f"{first.pid}, 1024\n{second.pid}, 2048\n"
    kill(first)
    assert smi(machine, *query).stdout == f"{second.pid}, 2048\n"
    used = smi(machine, "--query-gpu=memory.used", "--format=csv,noheader,nounits").stdout
    assert used == "2048\n"


def test_table(machine: Path, two_gpus) -> None:
    a, b, c = two_gpus
    result = smi(machine)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4} +", lines[0])
    assert all(len(line) == 79 for line in lines[1:]), lines
    body = "\n".join(lines[1:]) + "\n"
    assert body == (
        "+-----------------------------------------------------------------------------+\n"
        "| NVIDIA-SMI 535.183.01    Driver Version: 535.183.01   CUDA Version: 12.2    |\n"
        "|-------------------------------+----------------------+----------------------+\n"
        "| GPU  Name        Persistence-M| Bus-Id        Disp.A | Volatile Uncorr. ECC |\n"
        "| Fan  Temp  Perf  Pwr:Usage/Cap|         Memory-Usage | GPU-Util  Compute M. |\n"
        "|                               |                      |               MIG M. |\n"
        "|===============================+======================+======================|\n"
        "|   0  Simulated GPU       Off  | 00000000:01:00.0 Off |                  N/A |\n"
        "| N/A   30C    P0    N/A /  N/A |   8725MiB / 81920MiB |      0%      Default |\n"
        "|                               |                      |                  N/A |\n"
        "+-------------------------------+----------------------+----------------------+\n"
        "|   1  Tesla T4            Off  | 00000000:02:00.0 Off |                  N/A |\n"
        "| N/A   30C    P0    N/A /  N/A |     42MiB / 15258MiB |      0%      Default |\n"
        "|                               |                      |                  N/A |\n"
        "+-------------------------------+----------------------+----------------------+\n"
        + " "
        * 79
        + "\n"
        "+-----------------------------------------------------------------------------+\n"
        "| Processes:                                                                  |\n"
        "|  GPU   GI   CI        PID   Type   Process name                  GPU Memory |\n"
        "|        ID   ID                                                   Usage      |\n"
        "|=============================================================================|\n"
        f"|    0   N/A  N/A  {a:>8}      C   sleep                            7295MiB |\n"
        f"|    0   N/A  N/A  {b:>8}      C   sleep                            1430MiB |\n"
        f"|    1   N/A  N/A  {c:>8}      C   sleep                              42MiB |\n"
        "+-----------------------------------------------------------------------------+\n"
    )


def test_table_selected_device_and_no_processes(machine: Path, two_gpus) -> None:
    write_machine(machine, {"devices": [{"total_memory": "8gi"}, {"total_memory": "8gi"}]})
    lines = smi(machine, "--id=1").stdout.splitlines()
    assert lines[8].startswith("|   1  Simulated GPU")
    assert not any(line.startswith("|   0  ") for line in lines)
    assert "|  No running processes found" + " " * 49 + "|" in lines
    assert smi(machine, "-i", default_uuid(1)).stdout.count("|   1  ") == 1
    assert smi(machine, "-i", "00000000:02:00.0").stdout.count("|   1  ") == 1


def test_list_gpus(machine: Path, two_gpus) -> None:
    assert smi(machine, "-L").stdout == (
        f"GPU 0: Simulated GPU (UUID: {default_uuid(0)})\nGPU 1: Tesla T4 (UUID: GPU-abc)\n"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["-q"],
        ["--query-gpu=index"],
        ["--query-gpu=index", "--format=json"],
        ["--query-gpu=index", "--format=noheader"],
        ["--query-gpu=nonsense", "--format=csv"],
        ["--query-compute-apps=memory.total", "--format=csv"],
        ["--query-gpu=index", "--query-compute-apps=pid", "--format=csv"],
        ["--format=csv"],
        ["-i"],
    ],
)
def test_bad_arguments(machine: Path, two_gpus, args: list[str]) -> None:
    result = smi(machine, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Please run 'nvidia-smi -h' for help." in result.stderr


def test_unknown_field_message(machine: Path, two_gpus) -> None:
    result = smi(machine, "--query-gpu=index,bogus", "--format=csv")
    assert result.stderr.startswith('Field "bogus" is not a valid field to query.\n')


def test_no_such_device(machine: Path, two_gpus) -> None:
    for args in (["-i", "2"], ["--id=GPU-nope", "--query-gpu=index", "--format=csv"]):
        result = smi(machine, *args)
        assert (result.returncode, result.stdout) == (6, "No devices were found\n")


def test_no_devices(machine: Path) -> None:
    write_machine(machine, {"devices": []})
    result = smi(machine, "--query-gpu=index", "--format=csv,noheader")
    assert (result.returncode, result.stdout) == (6, "No devices were found\n")


@pytest.mark.parametrize("setup", ["unset", "missing", "corrupt"])
def test_no_description(machine: Path, setup: str) -> None:
    if setup == "corrupt":
        write_machine(machine, '{"devices": [')
    result = smi(None if setup == "unset" else machine, "--query-gpu=index", "--format=csv")
    assert result.returncode == 9
    assert result.stdout == ""
    assert "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver" in (
        result.stderr
    )
    assert "simulated machine:" in result.stderr
    assert smi(None if setup == "unset" else machine).returncode == 9


def test_help_and_version(machine: Path) -> None:
    assert "--query-gpu" in smi(None, "-h").stdout
    assert smi(None, "--version").stdout.startswith("NVIDIA-SMI version  : 535.183.01\n")


def test_closed_pipe_is_quiet(machine: Path, two_gpus) -> None:
    environment = dict(os.environ, GENV_FAKE_MACHINE=str(machine))
    result = subprocess.run(
        f"'{NVIDIA_SMI}' | head -n 1", shell=True, capture_output=True, text=True, env=environment
    )
    assert result.returncode == 0
    assert result.stderr == ""


@pytest.mark.skipif(not PEER_SHIM.is_file(), reason="genv 1.4.3 is not installed")
def test_genv_1_4_3_shim_reads_the_table(machine: Path, two_gpus, tmp_path: Path) -> None:
    """genv 1.4.3's nvidia-smi shim wraps this nvidia-smi: it must find devices and processes."""
    a, b, c = two_gpus
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").symlink_to(NVIDIA_SMI)
    environment = dict(os.environ)
    environment.update(
        GENV_FAKE_MACHINE=str(machine),
        PATH=f"{bin_dir}{os.pathsep}{environment.get('PATH', '')}",
        CUDA_VISIBLE_DEVICES="0",
        GENV_ENVIRONMENT_ID="no-such-env",
    )
    environment.pop("GENV_BYPASS", None)
    result = subprocess.run(
        [sys.executable, str(PEER_SHIM)], capture_output=True, text=True, env=environment
    )
    assert result.returncode == 0, result.stderr
    # only device 0, and none of its processes belong to the environment: 0 MiB used
    assert "|      0MiB / 81920MiB |" in result.stdout
    assert "Missing information" not in result.stdout
    assert "|  No running processes found" in result.stdout
    assert str(c) not in result.stdout
    assert "Tesla T4" not in result.stdout


SYMBOLS = [
    "nvmlInit",
    "nvmlInit_v2",
    "nvmlInitWithFlags",
    "nvmlShutdown",
    "nvmlErrorString",
    "nvmlSystemGetDriverVersion",
    "nvmlSystemGetNVMLVersion",
    "nvmlSystemGetCudaDriverVersion",
    "nvmlSystemGetCudaDriverVersion_v2",
    "nvmlSystemGetProcessName",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetHandleByUUID",
    "nvmlDeviceGetIndex",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetMemoryInfo_v2",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetMPSComputeRunningProcesses",
    "nvmlDeviceGetMPSComputeRunningProcesses_v2",
    "nvmlDeviceGetMPSComputeRunningProcesses_v3",
    "nvmlDeviceGetGraphicsRunningProcesses",
    "nvmlDeviceGetGraphicsRunningProcesses_v2",
    "nvmlDeviceGetGraphicsRunningProcesses_v3",
]


def test_stand_in_nvml_symbols(nvml_dir: Path) -> None:
    """The library exports what pynvml asks for, and nothing but NVML's names.

    Loaded in a child: once loaded here, any later CDLL("libnvidia-ml.so.1") in this test
    process would get the stand-in.
    """
    script = textwrap.dedent(
        """
        import ctypes, json, sys
        library = ctypes.CDLL(sys.argv[1])
        library.nvmlErrorString.restype = ctypes.c_char_p
        count = ctypes.c_uint(0)
        print(json.dumps({
            "missing": [name for name in sys.argv[2:] if not hasattr(library, name)],
            "internal": hasattr(library, "sim_load") or hasattr(library, "parse_flat"),
            "lost": library.nvmlErrorString(15).decode(),
            "before_init": library.nvmlDeviceGetCount_v2(ctypes.byref(count)),
        }))
        """
    )
    library = str(nvml_dir / "libnvidia-ml.so.1")
    result = subprocess.run(
        [sys.executable, "-c", script, library, *SYMBOLS],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout) == {
        "missing": [],
        "internal": False,
        "lost": "GPU is lost",
        "before_init": 1,  # NVML_ERROR_UNINITIALIZED
    }


# Two snapshots in one process: the direct process-list path sizes its buffer from the first
# answer, so the second (with more processes than that) must grow it.
GROWING_SNAPSHOTS = textwrap.dedent(
    """
    import json, sys
    from genv.backends.machine_file import write_machine
    from genv.backends.nvml import NvmlBackend
    backend = NvmlBackend()
    views = []
    for step in ("first", "second"):
        if step == "second":
            second = json.loads(sys.argv[2])
            write_machine(sys.argv[1], second["devices"], second["processes"])
        snapshot = backend.snapshot()
        views.append(sorted([p.pid, p.device_index, p.used_memory] for p in snapshot.processes))
    print(json.dumps(views))
    """
)


def test_nvml_backend_lists_many_processes_and_grows_its_buffer(
    nvml_dir: Path, machine: Path, sleepers
) -> None:
    """Hundreds of processes on one GPU, more than the backend's first buffer holds."""
    processes = [sleepers() for _ in range(150)]
    first = [{"pid": p.pid, "device": 0, "used_memory": "1mi"} for p in processes[:40]]
    second = [
        {"pid": p.pid, "device": i % 2, "used_memory": f"{i + 1}mi"}
        for i, p in enumerate(processes)
    ]
    devices = [{"total_memory": "80gi"}, {"total_memory": "80gi"}]
    write_machine(machine, {"devices": devices, "processes": first})
    environment = dict(os.environ, GENV_FAKE_MACHINE=str(machine), LD_LIBRARY_PATH=str(nvml_dir))
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            GROWING_SNAPSHOTS,
            str(machine),
            json.dumps({"devices": devices, "processes": second}),
        ],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    views = json.loads(result.stdout)
    assert views[0] == sorted([p.pid, 0, MIB] for p in processes[:40])
    assert views[1] == sorted([p.pid, i % 2, (i + 1) * MIB] for i, p in enumerate(processes))


# ---- the flat form: the stand-ins read nothing else ----------------------------------------


def test_a_json_edited_by_hand_is_not_shown_until_compiled(probe, machine: Path) -> None:
    write_machine(machine, {"devices": [{"total_memory": "1gi"}]})
    nvml = probe()
    assert nvml.ask("init") is None
    assert nvml.ask("snapshot")["count"] == 1
    machine.write_text(json.dumps({"devices": [{"total_memory": "1gi"}] * 2}))
    result = smi(machine, "--query-gpu=index", "--format=csv,noheader")
    assert result.returncode == 9
    assert "changed since its flat form was written" in result.stderr
    assert "python -m genv.backends.machine_file" in result.stderr
    assert nvml.ask("snapshot")["count"]["error"] == "NVMLError_Unknown"
    compile_machine(machine)
    assert nvml.ask("snapshot")["count"] == 2
    assert smi(machine, "--query-gpu=index", "--format=csv,noheader").stdout == "0\n1\n"


def test_no_flat_form_at_all(probe, machine: Path) -> None:
    machine.write_text('{"devices": []}')
    result = smi(machine, "-L")
    assert result.returncode == 9 and "has no flat form" in result.stderr
    assert probe().ask("init")["error"] == "NVMLError_DriverNotLoaded"


def test_the_flat_form_carries_genv_s_own_error(machine: Path) -> None:
    write_machine(machine, '{"devices": [{"total_memory": "80 gb"}]}')
    result = smi(machine, "-L")
    assert result.returncode == 9
    assert "devices[0].total_memory: invalid memory amount '80 gb'" in result.stderr


HOSTILE_BODIES = [
    "",
    "nonsense\n",
    "genv-machine-flat 1\n",
    "genv-machine-flat 2\n{json}\nboot -\ndevices 0\nprocesses 0\nend\n",
    "{magic}\n{json}\nboot -\ndevices 0\nprocesses 0\n",  # no end
    "{magic}\n{json}\nboot -\ndevices 0\nprocesses 0\nend",  # no newline
    "{magic}\n{json}\nboot -\ndevices 0\nprocesses 0\nend\nmore\n",
    "{magic}\n{json}\nboot -\ndevices 99999999999999999999999\nprocesses 0\nend\n",
    "{magic}\n{json}\nboot -\ndevices 4294967296\nprocesses 0\nend\n",
    "{magic}\n{json}\nboot -\ndevices 2\n1 GPU-a A\nprocesses 0\nend\n",  # one short
    "{magic}\n{json}\nboot -\ndevices 1\n-1 GPU-a A\nprocesses 0\nend\n",
    "{magic}\n{json}\nboot -\ndevices 1\n18446744073709551615 GPU-a A\nprocesses 0\nend\n",
    "{magic}\n{json}\nboot -\ndevices 1\n18446744073709551616 GPU-a A\nprocesses 0\nend\n",
    "{magic}\n{json}\nboot -\ndevices 1\n1 GPU-%zz A\nprocesses 0\nend\n",
    "{magic}\n{json}\nboot -\ndevices 1\n1 GPU-%00 A\nprocesses 0\nend\n",
    "{magic}\n{json}\nboot -\ndevices 1\n1 GPU-%0 A\nprocesses 0\nend\n",
    "{magic}\n{json}\nboot -\ndevices 1\n1 " + "x" * 96 + " A\nprocesses 0\nend\n",
    "{magic}\n{json}\nboot -\ndevices 1\n1  A\nprocesses 0\nend\n",
    "{magic}\n{json}\nboot -\ndevices 1\n1 GPU-a A extra\nprocesses 0\nend\n",
    "{magic}\n{json}\nboot -\ndevices 2\n1 GPU-a A\n1 GPU-a B\nprocesses 0\nend\n",
    "{magic}\n{json}\nboot -\ndevices 0\nprocesses 1048577\nend\n",
    "{magic}\n{json}\nboot -\ndevices 0\nprocesses 3\n0 1 - -\nend\n",
    "{magic}\n{json}\nboot -\ndevices 0\nprocesses 1\n0 0 - -\nend\n",  # pid 0
    "{magic}\n{json}\nboot -\ndevices 0\nprocesses 1\n0 1 x -\nend\n",
    "{magic}\n{json}\nboot -\ndevices 0\nprocesses 1\n0 1 - 99999999999999999999\nend\n",
    "{magic}\n{json}\nboot -\ndevices 0\nprocesses 1\n0 1 -\nend\n",
    "{magic}\n{json}\nboot " + "b" * 64 + "\ndevices 0\nprocesses 0\nend\n",
    "{magic}\n{json}\nboot a\x00b\ndevices 0\nprocesses 0\nend\n",
    "{magic}\n{json}\nerror %zz\nend\n",
    "{magic}\njson x y\nboot -\ndevices 0\nprocesses 0\nend\n",
    "{magic}\n{json}\n" + "\n" * 10000,
]


@pytest.mark.parametrize("body", HOSTILE_BODIES)
def test_a_hostile_flat_file_is_one_error_line(probe, machine: Path, body: str) -> None:
    """Whatever the flat file holds (someone else may have written it), no crash: NVIDIA's
    driver message and the reason, or NVML's "driver not loaded"."""
    write_machine(machine, {"devices": [{"total_memory": "1gi"}]})
    status = machine.stat()
    text = body.replace("{magic}", "genv-machine-flat 1").replace(
        "{json}", f"json {status.st_size} {status.st_mtime_ns}"
    )
    Path(f"{machine}.flat").write_text(text)
    result = smi(machine, "--query-gpu=index", "--format=csv")
    assert result.returncode == 9, result.stdout
    assert result.stderr.startswith("NVIDIA-SMI has failed")
    assert len(result.stderr.splitlines()) == 2
    assert probe().ask("init")["error"] == "NVMLError_DriverNotLoaded"


# ---- a listed pid counts only for the very process it described ---------------------------


def reuse_pid(pid: int) -> subprocess.Popen | None:
    """A new ``sleep`` that gets ``pid`` (free again), through ns_last_pid; None when another
    process on this machine took it first every time, or the kernel does not let us."""
    for _ in range(50):
        try:
            Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        except OSError:
            return None
        process = subprocess.Popen(["sleep", "300"])
        if process.pid == pid:
            return process
        process.kill()  # our own child, not reaped: no one else's process
        process.wait()
    return None


def test_a_reused_pid_is_never_taken_for_the_listed_process(probe, machine: Path, sleepers) -> None:
    """The listed process exits; a stranger gets its pid: no view reports the stranger."""
    listed = subprocess.Popen(["sleep", "300"])
    write_entries(
        machine, [{"total_memory": "8gi"}], [{"pid": listed.pid, "device": 0, "used_memory": "1gi"}]
    )
    backend, through_nvml, through_smi = three_views(probe, machine)
    assert backend["processes"] == [(default_uuid(0), listed.pid, 1024)]
    assert through_nvml == backend and through_smi == backend
    kill(listed)
    stranger = reuse_pid(listed.pid)
    if stranger is None:
        pytest.skip("could not get the same pid again (ns_last_pid, a busy machine)")
    try:
        assert stranger.pid == listed.pid
        backend, through_nvml, through_smi = three_views(probe, machine)
        assert backend["processes"] == through_nvml["processes"] == []
        assert through_smi["processes"] == []
        assert backend["devices"][0][4] == through_nvml["devices"][0][4] == 0
    finally:
        kill(stranger)


def test_wrong_start_and_later_start_count_in_no_view(probe, machine: Path, sleepers) -> None:
    """A live pid of another start, and a start-less entry written before its process
    started: neither is that process, for genv, the NVML stand-in and nvidia-smi alike."""
    mine, later, unrecorded = sleepers(), sleepers(), sleepers()
    start = procfs.start_of(later.pid)
    assert start is not None
    write_entries(
        machine,
        [{"total_memory": "8gi"}],
        [
            {"pid": mine.pid, "device": 0, "used_memory": "1gi"},
            {"pid": later.pid, "device": 0, "used_memory": "2gi", "start": start - 1},
            {"pid": unrecorded.pid, "device": 0, "used_memory": "3gi", "start": None},
        ],
    )
    backend, through_nvml, through_smi = three_views(probe, machine)
    assert backend["processes"] == sorted(
        [(default_uuid(0), mine.pid, 1024), (default_uuid(0), unrecorded.pid, 3072)]
    )
    assert through_nvml == backend and through_smi == backend
    # the file as if written before `unrecorded` started: the entry is not that process
    unrecorded_start = procfs.start_of(unrecorded.pid)
    assert unrecorded_start is not None
    offset = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    before = offset + (unrecorded_start - 2) * 1_000_000_000 // procfs.clock_ticks()
    os.utime(machine, ns=(before, before))
    compile_machine(machine)
    backend, through_nvml, through_smi = three_views(probe, machine)
    assert backend["processes"] == [(default_uuid(0), mine.pid, 1024)]
    assert through_nvml == backend and through_smi == backend


def test_the_launcher_builds_and_runs_the_stand_in(machine: Path, tmp_path: Path) -> None:
    """standins/nvidia-smi (what PATH=standins finds) runs the compiled program, also
    through a symbolic link."""
    write_machine(machine, {"devices": [{"total_memory": "1gi"}]})
    link = tmp_path / "nvidia-smi"
    link.symlink_to(NVIDIA_SMI)
    environment = dict(os.environ, GENV_FAKE_MACHINE=str(machine))
    for command in (NVIDIA_SMI, link):
        result = subprocess.run(
            [str(command), "-L"], capture_output=True, text=True, env=environment, check=False
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"GPU 0: Simulated GPU (UUID: {default_uuid(0)})\n"


def test_build_nvml_prints_the_library(tmp_path: Path, built: Path) -> None:
    result = subprocess.run(
        ["sh", str(BUILD_NVML), str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{tmp_path}/libnvidia-ml.so.1\n"
    failing = subprocess.run(
        ["sh", str(BUILD_NVML), str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env=dict(os.environ, CC="false"),
        check=False,
    )
    assert failing.returncode != 0
