#!/usr/bin/env python3
"""Start-up of the quick commands: this project against genv 1.4.3 on one simulated machine.

    python bench/startup.py [--runs 30] [--json out.json] [--genv PATH] [--peer DIR]
                            [--backend fake|nvml] [--envs 60]

Runs as root (the benchmark's commands run as root). Standalone: it needs only the project's
``genv`` (default: ``.venv/bin/genv`` of this checkout; ``--genv`` for another install, e.g.
a ``pip install .`` in a scratch virtual environment) and genv 1.4.3's installation
(``--peer``, default ``$GENV_PEER`` or ``/work/main/.peer/genv-1.4.3``). In a scratch folder
it writes a machine of 8 GPUs (two real ``sleep`` processes on them), gives each tool a state
of ``--envs`` environments of root (four of them attached to devices 0-3), and then times,
round-robin, each tool's:

- ``genv devices`` and ``genv envs`` (the listings);
- ``genv envs activate --eid … --uid 0 --username root --pid P`` (what the shell function
  runs; a new environment of a new process each time, which exits afterwards);
- ``genv activate --gpus 1`` as the shell integration runs it: ``bash -c '. INIT; genv
  activate --gpus 1'`` with INIT the tool's own ``genv shell --init`` (bash's start counts
  for both; the shell exits afterwards, so its environment ends);
- ``python -c pass`` with each tool's interpreter (the floor).

CPU time is user + system of the child and everything it waited for (``os.wait4``); wall
time is noisy on a shared machine, CPU time much less. The table shows medians; ``--json``
writes every number. Everything started is stopped, and the scratch folder removed, on exit.
GENV_ variables, LD_LIBRARY_PATH, PYTHONPATH and PYTHONDONTWRITEBYTECODE of this shell are
not passed on. The project's NVML path (``--backend nvml``) needs ``cc`` for the stand-in.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STANDINS = REPO / "standins"
DEFAULT_PEER = Path(os.environ.get("GENV_PEER", REPO / ".peer" / "genv-1.4.3"))  # tests/compat/peers.py
PROJECT, PEER = "project", "genv 1.4.3"
DEVICES = 8
ATTACHED = 4  # environments e1..e4 hold devices 0..3; 4..7 stay free for activations

# run with the project's interpreter: PATH DEVICES PID... (one process per device from 0)
WRITE_MACHINE = """
import sys
from genv.backends.machine_file import write_machine
pids = [int(p) for p in sys.argv[3:]]
write_machine(sys.argv[1], [{"total_memory": "80gi"}] * int(sys.argv[2]),
              [{"pid": pid, "device": i, "used_memory": "1gi"} for i, pid in enumerate(pids)])
"""


class Tool:
    def __init__(self, name: str, genv: Path, env: dict[str, str]) -> None:
        self.name = name
        self.genv = genv
        self.env = env
        self.python = _interpreter(genv)
        self.init = ""  # the file with this tool's ``genv shell --init``

    def run(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.genv), *arguments], env=self.env, text=True,
                                capture_output=True, stdin=subprocess.DEVNULL, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{self.name}: genv {' '.join(arguments)} exited "
                               f"{result.returncode}: {result.stderr.strip()[-500:]}")
        return result


def _interpreter(script: Path) -> str:
    """The interpreter of a console script (its ``#!`` line)."""
    with open(script, "rb") as file:
        first = file.readline().decode().strip()
    if not first.startswith("#!"):
        raise SystemExit(f"{script}: not a Python console script")
    return first[2:].split()[0]


def timed(command: list[str], env: dict[str, str], scratch: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child and its waited-for children)."""
    with open(scratch / "out", "w") as out, open(scratch / "err", "w") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {(scratch / 'err').read_text()[-500:]}")
    return wall, usage.ru_utime + usage.ru_stime


class Keeper:
    """A ``sleep`` that stands for a process (a GPU process, or a shell)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(["sleep", "100000"], stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait()


def base_env(extra: dict[str, str]) -> dict[str, str]:
    dropped = ("LD_LIBRARY_PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("GENV_") and key not in dropped}
    return {**env, **extra}


def make_tools(args: argparse.Namespace, scratch: Path, machine: Path) -> list[Tool]:
    path = f"{STANDINS}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    project_env = {"GENV_FAKE_MACHINE": str(machine), "PATH": path,
                   "GENV_TMPDIR": str(scratch / "state-project"),
                   "GENV_GPU_BACKEND": args.backend}
    if args.backend == "nvml":
        built = subprocess.run(["sh", str(STANDINS / "build-nvml.sh"), str(scratch / "nvml")],
                               check=True, capture_output=True, text=True).stdout.strip()
        project_env["LD_LIBRARY_PATH"] = str(Path(built).parent)
    peer_env = {"GENV_FAKE_MACHINE": str(machine),
                "PATH": f"{args.peer / 'bin'}:{path}",  # its shell function runs ``genv``
                "GENV_TMPDIR": str(scratch / "state-peer")}
    return [Tool(PROJECT, args.genv, base_env(project_env)),
            Tool(PEER, args.peer / "bin" / "genv", base_env(peer_env))]


def populate(tool: Tool, envs: int, pids: list[int], scratch: Path) -> None:
    """``envs`` environments of root, through the tool's own commands."""
    Path(tool.env["GENV_TMPDIR"]).mkdir(mode=0o755)
    for k in range(1, envs + 1):
        tool.run("envs", "activate", "--eid", f"e{k}", "--uid", "0", "--username", "root",
                 "--pid", str(pids[k % len(pids)]))
        if k <= ATTACHED:
            tool.run("devices", "attach", "--eid", f"e{k}", "--index", str(k - 1))
    init = scratch / f"init-{tool.name.replace(' ', '-')}.sh"
    init.write_text(tool.run("shell", "--init").stdout)
    tool.init = str(init)


def commands(tool: Tool, run: int, shell: Keeper) -> dict[str, list[str]]:
    activate = ["envs", "activate", "--eid", f"act{run}", "--uid", "0", "--username", "root",
                "--pid", str(shell.pid)]
    return {
        "genv devices": [str(tool.genv), "devices"],
        "genv envs": [str(tool.genv), "envs"],
        "genv envs activate": [str(tool.genv), *activate],
        "genv activate (shell)": ["bash", "-c", f". {tool.init}; genv activate --gpus 1"],
        "python -c pass": [tool.python, "-c", "pass"],
    }


def measure(tools: list[Tool], runs: int, scratch: Path) -> dict:
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    for run in range(-1, runs):  # run -1 warms up (byte-code files, page cache)
        for tool in tools:
            shell = Keeper()  # the process that ``genv envs activate`` registers
            try:
                for name, command in commands(tool, run, shell).items():
                    wall, cpu = timed(command, tool.env, scratch)
                    if run >= 0:
                        entry = results.setdefault(name, {}).setdefault(
                            tool.name, {"wall_s": [], "cpu_s": []})
                        entry["wall_s"].append(wall)
                        entry["cpu_s"].append(cpu)
            finally:
                shell.stop()  # its environment ends with it, as a shell's does
    return results


def table(results: dict) -> str:
    lines = [
        "| command | project CPU ms | 1.4.3 CPU ms | CPU ratio | project wall ms "
        "| 1.4.3 wall ms | wall ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, by_tool in results.items():
        ours, peer = by_tool[PROJECT], by_tool[PEER]
        cpu = [statistics.median(t["cpu_s"]) * 1000 for t in (ours, peer)]
        wall = [statistics.median(t["wall_s"]) * 1000 for t in (ours, peer)]
        lines.append(f"| {name} | {cpu[0]:.1f} | {cpu[1]:.1f} | {cpu[1] / cpu[0]:.2f}x "
                     f"| {wall[0]:.1f} | {wall[1]:.1f} | {wall[1] / wall[0]:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs of each (default 30)")
    parser.add_argument("--envs", type=int, default=60, help="environments in each state")
    parser.add_argument("--genv", type=Path, default=REPO / ".venv" / "bin" / "genv",
                        help="the project's genv (default: .venv/bin/genv of this checkout)")
    parser.add_argument("--peer", type=Path, default=DEFAULT_PEER,
                        help="genv 1.4.3's installation (its bin/genv)")
    parser.add_argument("--backend", choices=("fake", "nvml"), default="fake",
                        help="the project's GPU backend (default: fake)")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    args = parser.parse_args()
    for script in (args.genv, args.peer / "bin" / "genv"):
        if not script.exists():
            raise SystemExit(f"{script} does not exist")
    scratch = Path(tempfile.mkdtemp(prefix="genv-startup-"))
    keepers: list[Keeper] = []
    try:
        keepers = [Keeper(), Keeper()]
        pids = [keeper.pid for keeper in keepers]
        machine = scratch / "machine.json"
        subprocess.run([_interpreter(args.genv), "-c", WRITE_MACHINE, str(machine),
                        str(DEVICES), *map(str, pids)], check=True)
        tools = make_tools(args, scratch, machine)
        for tool in tools:
            populate(tool, args.envs, pids, scratch)
        results = measure(tools, args.runs, scratch)
    finally:
        for keeper in keepers:
            keeper.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"project: {args.genv} (backend {args.backend}); genv 1.4.3: {args.peer}")
    print(f"{args.runs} runs each, {args.envs} environments of root; medians; "
          "ratio = genv 1.4.3 / project")
    print(table(results))
    if args.json:
        document = {"runs": args.runs, "envs": args.envs, "backend": args.backend,
                    "genv": str(args.genv), "peer": str(args.peer), "results": results}
        args.json.write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
