"""The quick commands import only what they need, so that they start fast (issue 15).

The shell integration runs ``genv activate`` (and the IDE integrations ``genv envs activate``)
as a shell starts, and people run ``genv devices`` and ``genv envs`` at the prompt: every module
they import is start-up time (``bench/startup.py`` measures it against genv 1.4.3). Each test
runs one command under ``python -X importtime`` on a simulated machine with some environments,
and checks that none of the heavy modules it has no use for was imported: the daemon, the
remote and monitoring front ends, the GPU libraries of another backend, and the standard
modules that cost milliseconds each (``logging``, ``typing``, ``dataclasses`` with ``inspect``,
``threading``, ``asyncio``, ...). Only the command's own argument parser is built, so no
other command's module is imported either.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

# Never needed by a quick command (what a module imports comes with it: genv.enforce brings
# the daemon, genv.metrics prometheus_client, genv.top rich).
HEAVY = frozenset(
    {
        "genv.enforce",
        "genv.remote",
        "genv.metrics",
        "genv.top",
        "genv.ray",
        "genv.smi",
        "genv.sdk",
        "genv.store.legacy",  # genv 1.4.3's files: read only while they are there
        "genv.store.daemon_lock",
        "genv.system.watch",
        "genv.system.kernels",  # only when an environment has a Jupyter kernel
        "genv.backends.base",  # the backend Protocols (typing)
        "genv.backends.nvml",
        "genv.backends.nvml_binding",
        "genv.backends.nvidia_smi",
        "pynvml",
        "psutil",
        "rich",
        "prometheus_client",
        "ray",
        "asyncio",
        "subprocess",
        "threading",
        "logging",
        "typing",
        "dataclasses",
        "inspect",
        "ctypes",
        "secrets",
        "hashlib",
        "datetime",
        "random",
        "socket",
    }
)
# A listing reads; it takes no lock and writes nothing.
WRITING = frozenset({"genv.store.transaction", "genv.store.locks", "genv.core.devices"})
# genv.cli modules any command imports besides its own.
CLI_ALWAYS = frozenset({"genv.cli", "genv.cli.main", "genv.cli.common", "genv.cli.migrate"})


def imported(command: list[str], env: dict[str, str]) -> tuple[set[str], str]:
    """The modules ``command`` (an interpreter and its arguments) imported, and its stdout."""
    interpreter, *arguments = command
    result = subprocess.run(
        [interpreter, "-X", "importtime", *arguments],
        env=env, cwd="/", stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=60, check=False,
    )
    lines = result.stderr.splitlines()
    modules = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    other = [line for line in lines if not line.startswith("import time:")]
    assert result.returncode == 0, "\n".join(other)
    assert modules, "no -X importtime output"
    return modules - {"imported package"}, result.stdout


def unwanted(modules: set[str], banned: frozenset[str]) -> list[str]:
    """The imported modules that are, or are inside, a banned module or package."""
    return sorted(m for m in modules if any(m == b or m.startswith(b + ".") for b in banned))


@pytest.fixture
def machine(fake_machine, run_genv, new_env):
    """A simulated machine with environments of root, two of them attached to devices, and
    genv's variables for the commands (from the fixtures)."""
    for k in range(1, 7):
        new_env(f"e{k}", name=f"job{k}")
    for k in (1, 2):
        assert run_genv("devices", "attach", "--eid", f"e{k}", "--count", "1").rc == 0
    return dict(os.environ)


def genv(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "genv", *arguments]


@pytest.mark.parametrize("arguments", [("devices",), ("devices", "ps"), ("envs",), ("envs", "ps")])
def test_a_listing_imports_neither_the_heavy_modules_nor_the_writers(machine, arguments) -> None:
    modules, out = imported(genv(*arguments), machine)
    assert "e1" in out and "e2" in out  # it did list the state
    assert unwanted(modules, HEAVY | WRITING) == []
    own = {"genv.cli.devices" if arguments[0] == "devices" else "genv.cli.envs"}
    assert {m for m in modules if m.startswith("genv.cli")} <= CLI_ALWAYS | own


def test_envs_activate_imports_no_heavy_module(machine, sleeper, run_genv) -> None:
    process = sleeper()
    command = genv("envs", "activate", "--eid", "new", "--uid", "0", "--username", "root",
                   "--pid", str(process.pid))
    modules, _ = imported(command, machine)
    assert unwanted(modules, HEAVY) == []
    assert {m for m in modules if m.startswith("genv.cli")} <= CLI_ALWAYS | {"genv.cli.envs"}
    assert run_genv("envs", "query", "--eid", "new", "--query", "pids").lines == [
        str(process.pid)
    ]


def test_activate_as_the_shell_function_runs_it_imports_no_heavy_module(machine, sleeper) -> None:
    from genv.cli.shell_commands import genv_command

    shell = sleeper()  # the shell whose environment it becomes
    command = [*shlex.split(genv_command()), "activate", "--gpus", "1"]
    modules, out = imported(command, {**machine, "_GENV_SHELL_PID": str(shell.pid)})
    assert "export CUDA_VISIBLE_DEVICES=" in out  # the code the shell function evaluates
    assert unwanted(modules, HEAVY) == []
    assert {m for m in modules if m.startswith("genv.cli")} <= CLI_ALWAYS | {
        "genv.cli.shell_commands"
    }


def test_the_fake_backend_never_loads_nvml(machine) -> None:
    modules, _ = imported(genv("devices", "query", "--query", "index", "total_memory"), machine)
    assert unwanted(modules, frozenset({"pynvml", "ctypes", "genv.backends.nvml"})) == []


@pytest.fixture(scope="module")
def nvml_standin(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The folder of a freshly built stand-in ``libnvidia-ml.so.1``."""
    import shutil
    from pathlib import Path

    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler (cc) to build the NVML stand-in")
    out = tmp_path_factory.mktemp("nvml")
    build = Path(__file__).resolve().parents[2] / "standins" / "build-nvml.sh"
    result = subprocess.run(["sh", str(build), str(out)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    return str(out)


def test_a_listing_through_nvml_loads_the_driver_alone(machine, nvml_standin) -> None:
    """Through NVML, ``genv devices`` opens ``libnvidia-ml.so.1`` with ctypes and nothing
    more: not nvidia-ml-py (8,000 lines, and ``ctypes.util`` with ``subprocess``, about 20 ms
    at every start), nor ``threading``, nor ``shutil``."""
    env = {**machine, "GENV_GPU_BACKEND": "nvml", "LD_LIBRARY_PATH": nvml_standin}
    modules, out = imported(genv("devices"), env)
    assert "e1" in out and "e2" in out
    assert "genv.backends.nvml_binding" in modules  # it did read the GPUs through NVML
    banned = frozenset({"pynvml", "ctypes.util", "subprocess", "threading", "shutil"})
    assert unwanted(modules, banned) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="not root: it warns that it is not (a record)")
def test_one_cycle_with_nothing_to_say_imports_no_logging(machine, nvml_standin) -> None:
    """``genv enforce --interval 0`` is start-up and one cycle: ``logging`` (about 8 ms) and
    ``typing`` are imported only when there is something to log at the chosen level."""
    env = {**machine, "GENV_GPU_BACKEND": "nvml", "LD_LIBRARY_PATH": nvml_standin}
    modules, _ = imported(genv("enforce", "--interval", "0", "--non-env-processes"), env)
    assert "genv.enforce.daemon" in modules
    assert unwanted(modules, frozenset({"logging", "typing", "pynvml", "threading"})) == []


def test_one_cycle_still_logs_at_the_level_asked_for(machine, nvml_standin) -> None:
    env = {**machine, "GENV_GPU_BACKEND": "nvml", "LD_LIBRARY_PATH": nvml_standin}
    command = genv("enforce", "--interval", "0", "--non-env-processes", "--log-level", "debug")
    result = subprocess.run(command, env=env, cwd="/", stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("genv enforce: DEBUG: started as pid ")
    assert any(line.startswith("genv enforce: DEBUG: cycle done in ") for line in lines)
