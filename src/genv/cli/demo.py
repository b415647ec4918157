"""``genv demo``: the product description's quick start, played for real on a simulated machine.

Everything is real except the GPUs: stand-in ``quickstart`` processes run, genv enforce
terminates them with signals, and environments are attached and detached in a private state
folder. Nothing outside a temporary folder is touched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUICKSTART_MEMORY = "7295mi"


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--gpus", type=int, default=2, help="GPUs of the simulated machine")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the simulated machine's folder and print where it is",
    )


class Demo:
    def __init__(self, folder: Path, gpus: int) -> None:
        self.folder = folder
        self.machine = folder / "machine.json"
        self.env = {
            **os.environ,
            "GENV_GPU_BACKEND": "fake",
            "GENV_FAKE_MACHINE": str(self.machine),
            "GENV_TMPDIR": str(folder / "state"),
        }
        self.env.pop("GENV_ENVIRONMENT_ID", None)
        self.devices = [{"total_memory": "80gi", "name": "Simulated H100 80GB"}] * gpus
        self.gpu_processes: list[dict] = []
        self.children: list[subprocess.Popen] = []
        self.write_machine()

    def write_machine(self) -> None:
        from genv.backends.machine_file import write_machine

        write_machine(self.machine, self.devices, self.gpu_processes)

    def say(self, line: str = "") -> None:
        print(line, flush=True)

    def genv(self, *args: str, show: bool = True) -> str:
        if show:
            self.say(f"$ genv {' '.join(args)}")
        result = subprocess.run(
            [sys.executable, "-m", "genv", *args], env=self.env, capture_output=True, text=True
        )
        if show and result.stdout:
            print(result.stdout, end="", flush=True)
        if result.returncode != 0:
            sys.stderr.write(result.stderr)
        return result.stdout

    def quickstart(self, device: int, env: dict[str, str] | None = None) -> subprocess.Popen:
        """A stand-in for the CUDA ``quickstart`` application, holding memory on ``device``."""
        process = subprocess.Popen(
            ["quickstart", "3600"],
            executable=shutil.which("sleep"),
            env={**self.env, **(env or {})},
        )
        self.children.append(process)
        self.gpu_processes.append(
            {"pid": process.pid, "device": device, "used_memory": QUICKSTART_MEMORY}
        )
        self.write_machine()
        self.say("$ ./quickstart &")
        self.say(f"[1] {process.pid}")
        return process

    def job_done(self, process: subprocess.Popen) -> None:
        try:
            code = process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.say("(quickstart is still running)")
            return
        state = "Terminated" if code == -15 else ("Killed" if code == -9 else f"Exit {code}")
        self.say(f"[1]+  {state:<24}./quickstart")

    def run(self) -> int:
        self.say(f"# A simulated machine: {len(self.devices)} GPUs of 80 GiB, in {self.folder}")
        self.say()
        self.say("# Non-environment processes")
        process = self.quickstart(device=0)
        self.genv("enforce", "--interval", "0", "--non-env-processes")
        self.job_done(process)
        self.say()

        self.say("# Max devices per user")
        self.say("$ genv activate --gpus 1")
        shell = subprocess.Popen(["bash", "-c", "exec sleep 3600"], env=self.env)
        self.children.append(shell)
        eid = str(shell.pid)
        self.genv(
            "envs", "activate", "--eid", eid, "--uid", str(os.getuid()), "--pid", eid, show=False
        )
        self.genv("devices", "attach", "--eid", eid, "--count", "1", show=False)
        time.sleep(1)  # so that "attached ... ago" reads like a person's terminal
        self.genv("devices")
        process = self.quickstart(device=0, env={"GENV_ENVIRONMENT_ID": eid})
        self.genv("enforce", "--interval", "0", "--max-devices-per-user", "1")
        self.genv("enforce", "--interval", "0", "--max-devices-per-user", "0")
        self.job_done(process)
        self.genv("devices")
        return 0

    def close(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
                child.wait()


def run(args: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp(prefix="genv-demo-"))
    demo = Demo(folder, max(1, args.gpus))
    try:
        return demo.run()
    finally:
        demo.close()
        if args.keep:
            print(f"# The simulated machine is kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
