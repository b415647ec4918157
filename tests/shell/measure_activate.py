#!/usr/bin/env python3
"""How long `genv activate --gpus 1` takes in a real interactive bash, prompt to prompt.

Not a test: a script that prints the median over several activations (each followed by an
untimed `genv deactivate`) on a simulated 2-GPU machine in a fresh state folder.

    python tests/shell/measure_activate.py               # this project's genv
    python tests/shell/measure_activate.py --peer        # genv 1.4.3 from /opt/genv-peer
    python tests/shell/measure_activate.py --runs 50 --genv /path/to/genv

genv 1.4.3 reads the devices through `nvidia-smi`, so --peer puts the stand-in
(standins/nvidia-smi, which shows the same simulated machine) on PATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pexpect

from genv.backends.machine_file import write_machine

REPO = Path(__file__).resolve().parents[2]
PEER = "/opt/genv-peer/bin/genv"
STANDIN = REPO / "standins" / "nvidia-smi"
PROMPT = "measure> "
ACTIVE_PROMPT = "(genv) " + PROMPT


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed activations (default 20)")
    parser.add_argument("--gpus", type=int, default=1, help="devices to attach (default 1)")
    parser.add_argument("--peer", action="store_true", help=f"measure genv 1.4.3 ({PEER})")
    parser.add_argument("--genv", help="the genv program to measure (default: genv on PATH)")
    args = parser.parse_args()

    program = args.genv or (PEER if args.peer else shutil.which("genv"))
    if not program or not os.access(program, os.X_OK):
        print(f"measure_activate: no genv program to run ({program or 'genv not on PATH'})",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="genv-measure-") as folder:
        env = environment(Path(folder), program, args.peer)
        if env is None:
            return 1
        times = measure(program, env, Path(folder), args.runs, args.gpus)
    label = "genv 1.4.3" if args.peer else program
    print(f"{label}: genv activate --gpus {args.gpus}, prompt to prompt in bash: "
          f"median {statistics.median(times):.1f} ms over {len(times)} runs "
          f"(min {min(times):.1f}, max {max(times):.1f})")
    return 0


def environment(folder: Path, program: str, peer: bool) -> dict[str, str] | None:
    """The shell's environment: a 2-GPU simulated machine and its own state folder."""
    machine = folder / "machine.json"
    write_machine(machine, [{"total_memory": "80gi"}] * 2)  # with the stand-ins' flat form
    # PYTHONDONTWRITEBYTECODE is dropped: an installed genv has its bytecode compiled, and
    # compiling every module on every call would measure the checkout, not the program.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GENV_", "_GENV", "CUDA_VISIBLE", "PYTHONDONTWRITEBYTECODE"))}
    env.update(GENV_GPU_BACKEND="fake", GENV_FAKE_MACHINE=str(machine),
               GENV_TMPDIR=str(folder / "state"), PS1=PROMPT, TERM="dumb")
    path = env.get("PATH", "/usr/bin:/bin")
    if peer:
        if not STANDIN.exists():
            print(f"measure_activate: genv 1.4.3 needs an nvidia-smi; {STANDIN} is missing",
                  file=sys.stderr)
            return None
        bin_dir = folder / "bin"
        bin_dir.mkdir()
        (bin_dir / "nvidia-smi").symlink_to(STANDIN)
        path = f"{Path(program).parent}:{bin_dir}:{path}"
    env["PATH"] = path
    return env


def measure(program: str, env: dict[str, str], cwd: Path, runs: int, gpus: int) -> list[float]:
    """Milliseconds from sending each activation to the next prompt being drawn."""
    shell = pexpect.spawn("bash", ["--norc", "--noprofile", "-i"], env=env, cwd=str(cwd),
                          encoding="utf-8", timeout=60, dimensions=(40, 500))
    shell.delaybeforesend = None  # pexpect waits 50 ms before each send by default
    try:
        shell.expect_exact(PROMPT)
        shell.sendline("bind 'set enable-bracketed-paste off' 2>/dev/null")
        shell.expect_exact(PROMPT)
        shell.sendline(f'eval "$({program} shell --init)"')
        shell.expect_exact(PROMPT)
        times = []
        for run in range(runs + 1):  # the first run warms the caches and is not counted
            start = time.perf_counter()
            shell.sendline(f"genv activate --gpus {gpus}")
            shell.expect_exact("\n" + ACTIVE_PROMPT)
            elapsed = (time.perf_counter() - start) * 1000
            if run:
                times.append(elapsed)
            shell.sendline("genv deactivate")
            shell.expect_exact("\n" + PROMPT)
        return times
    finally:
        shell.sendline("exit")
        shell.close(force=True)


if __name__ == "__main__":
    raise SystemExit(main())
