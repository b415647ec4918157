"""Taking over genv 1.4.3's state on a server with 20 environments of 4 users (as root).

genv 1.4.3 (from PyPI, in its own virtual environment: tests/compat/peers.py) makes the
environments with its own low-level commands, the way the IDE integrations do (as root, with
``--uid``), for real processes of 4 real users on a simulated machine of 8 GPUs: per user 4 shell environments
(one or two processes each, one device each, 20gi capacity, so two share a device) and one
Jupyter kernel. Then this project's ``genv migrate`` takes them over; this prints and writes
to ``bench/MIGRATION.md`` what was taken over and how long it took (best and median of runs).

    sudo .venv/bin/python bench/migration.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests" / "compat")]

from genvbench import host  # noqa: E402

from genv.backends.machine_file import write_machine  # noqa: E402

import peers  # noqa: E402

USERS, SHELL_ENVS, DEVICES = 4, 4, 8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run it as root: it creates users")
    peer = peers.ensure(peers.GENV_143) / "bin" / "genv"
    ours = [sys.executable, "-m", "genv"]
    results = []
    pool = host.ProcessPool()
    with host.bench_users(USERS) as users:
        try:
            for run in range(args.runs):
                results.append(one_run(peer, ours, pool, users))
                pool.stop_all()
                print(f"run {run + 1}: {results[-1]['wall_s']:.3f} s", file=sys.stderr)
        finally:
            pool.stop_all()
    report(results)
    return 0


def one_run(peer: Path, ours: list[str], pool: host.ProcessPool, users: list) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="genvmigrate-"))
    try:
        state = scratch / "state"
        state.mkdir(mode=0o1777)
        state.chmod(0o1777)
        machine = scratch / "machine.json"
        write_machine(machine, [{"total_memory": "80gi"}] * DEVICES, [])
        # 1.4.3 keeps a kernel while `jupyter --runtime-dir` holds its connection file
        runtime = scratch / "runtime"
        runtime.mkdir()
        jupyter = peers.ensure(peers.JUPYTER) / "bin"
        env = {**os.environ, "GENV_TMPDIR": str(state), "GENV_FAKE_MACHINE": str(machine),
               "GENV_GPU_BACKEND": "fake", "JUPYTER_RUNTIME_DIR": str(runtime),
               "PATH": f"{REPO / 'standins'}:{jupyter}:{os.environ.get('PATH', '/usr/bin')}"}
        env.pop("GENV_ENVIRONMENT_ID", None)

        def legacy(*arguments: str) -> None:
            subprocess.run([str(peer), *arguments], env=env, check=True, capture_output=True)

        kernels = []
        for user in users:
            for number in range(SHELL_ENVS):
                eid = f"{user.name}-{number}"
                for _ in range(1 + number % 2):
                    keeper = pool.start(user, eid)
                    legacy("envs", "activate", "--eid", eid, "--uid", str(user.uid),
                           "--username", user.name, "--pid", str(keeper.process.pid))
                legacy("envs", "config", "--eid", eid, "gpu-memory", "--gpu-memory", "20gi")
                legacy("devices", "attach", "--eid", eid, "--count", "1")
        for user in users:  # last: 1.4.3 forgets kernels it cannot find on its next command
            kernel_id = str(uuid.uuid4())
            process = subprocess.Popen(
                [f"/tmp/kernel-{kernel_id}.json", "100000"], executable=host.SLEEP,
                user=user.uid, group=user.gid, extra_groups=[], cwd="/",
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            pool._sleepers.append(host.Sleeper(process, user, None))
            kernels.append(kernel_id)
            (runtime / f"kernel-{kernel_id}.json").write_text("{}")
            legacy("envs", "activate", "--eid", f"{user.name}-kernel", "--uid", str(user.uid),
                   "--kernel-id", kernel_id)
        _wait_cmdlines(kernels)
        begin = time.perf_counter()
        done = subprocess.run([*ours, "migrate", "--format", "json"], env=env, check=True,
                              capture_output=True, text=True)
        wall = time.perf_counter() - begin
        outcome = json.loads(done.stdout)
        listing = json.loads(subprocess.run([*ours, "envs", "ps", "--format", "json"], env=env,
                                            check=True, capture_output=True,
                                            text=True).stdout)
        return {"wall_s": wall, "inner_s": outcome["seconds"], "outcome": outcome,
                "listed": len(listing)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _wait_cmdlines(kernels: list[str]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen = ""
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    seen += Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
        if all(kernel in seen for kernel in kernels):
            return
        time.sleep(0.02)


def report(results: list[dict]) -> None:
    outcome = results[-1]["outcome"]
    taken = outcome["taken_over"]
    walls = [r["wall_s"] for r in results]
    inner = [r["inner_s"] for r in results]
    lines = [
        "# Taking over genv 1.4.3's state: 20 environments of 4 users",
        "",
        "Made by genv 1.4.3's own commands (see `bench/migration.py`); taken over by "
        "`genv migrate` as root, on a simulated machine of 8 GPUs.",
        "",
        "| what | taken over |",
        "| --- | --- |",
        f"| environments | {len(taken)} of {USERS * (SHELL_ENVS + 1)} "
        f"({len({e['uid'] for e in taken})} users) |",
        f"| processes | {sum(len(e['pids']) for e in taken)} |",
        f"| Jupyter kernels | {sum(len(e['kernel_ids']) for e in taken)} |",
        f"| attachments | {sum(len(e['devices']) for e in taken)} |",
        f"| refused / ended | {len(outcome['refused'])} / {len(outcome['ended'])} |",
        f"| environments listed afterwards | {results[-1]['listed']} |",
        "",
        f"| time ({len(results)} runs) | best | median |",
        "| --- | --- | --- |",
        f"| `genv migrate`, the whole command | {min(walls):.3f} s | "
        f"{statistics.median(walls):.3f} s |",
        f"| the takeover itself | {min(inner):.3f} s | {statistics.median(inner):.3f} s |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    (HERE / "MIGRATION.md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
