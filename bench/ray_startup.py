"""What a genv environment costs a Ray task: start-up time added per task.

    .venv/bin/python bench/ray_startup.py                  # prints the report
    .venv/bin/python bench/ray_startup.py --write bench/RAY_RESULTS.md

A local Ray cluster (4 CPUs, 2 GPUs) on a simulated machine of 2 devices of 80gi runs the
same trivial task of half a GPU three ways, one call at a time (submit to result):

- ``plain``: ``@ray.remote(num_gpus=0.5)``, as without genv;
- ``fresh worker``: the same, each call with a runtime_env of its own (what genv.ray asks
  of Ray, without registering anything): the cost of starting a worker per task;
- ``genv.ray``: ``@genv.ray.remote(num_gpus=0.5)``: that, plus the environment (register,
  configure, attach, unregister).

And a batch of 16 calls submitted at once (4 run at a time), wall time to the last result,
the mean of two runs in opposite orders.
The numbers are what this machine gives; they are not asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROUNDS = 20
BATCH = 16


def _setup(root: Path) -> None:
    from genv.backends.machine_file import write_machine

    state = root / "state"
    state.mkdir(mode=0o1777)
    write_machine(root / "machine.json", [{"total_memory": "80gi"}] * 2)
    for name in ("GENV_ENVIRONMENT_ID", "GENV_BYPASS"):
        os.environ.pop(name, None)
    os.environ.update(GENV_GPU_BACKEND="fake", GENV_FAKE_MACHINE=str(root / "machine.json"),
                      GENV_TMPDIR=str(state))


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
        "p90_ms": ordered[int(0.9 * (len(ordered) - 1))] * 1000,
        "min_ms": ordered[0] * 1000,
    }


def measure() -> dict[str, object]:
    import ray

    import genv.ray

    def task() -> int:
        return os.getpid()

    plain = ray.remote(num_gpus=0.5)(task)
    with_genv = genv.ray.remote(num_gpus=0.5)(task)

    def fresh() -> object:
        env = {"env_vars": {"BENCH_FRESH": secrets.token_hex(6)}}
        return plain.options(runtime_env=env).remote()

    variants = {
        "plain": plain.remote,
        "fresh worker": fresh,
        "genv.ray": with_genv.remote,
    }
    for call in variants.values():  # warm up: imports, function export, the worker pool
        ray.get([call() for _ in range(4)])
    sequential: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):  # interleaved, so that load on the machine hits all alike
        for name, call in variants.items():
            began = time.perf_counter()
            ray.get(call())
            sequential[name].append(time.perf_counter() - began)
    batches: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for names in (order, order[::-1]):  # both orders: each batch leaves Ray busy for the next
        for name in names:
            began = time.perf_counter()
            ray.get([variants[name]() for _ in range(BATCH)])
            batches[name].append(time.perf_counter() - began)
    batch = {name: statistics.fmean(times) for name, times in batches.items()}
    return {
        "sequential": {name: _stats(samples) for name, samples in sequential.items()},
        "batch_s": batch,
        "rounds": ROUNDS,
        "batch": BATCH,
        "ray": ray.__version__,
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def report(results: dict) -> str:
    seq = results["sequential"]
    lines = [
        "# genv.ray: start-up time a task's environment adds",
        "",
        "Made by `python bench/ray_startup.py` (its docstring says what each row is): Ray "
        f"{results['ray']}, Python {results['python']}, {results['cores']} cores, "
        f"{results['date']}. One call at a time, {results['rounds']} calls each, submit to "
        "result:",
        "",
        "| variant | median | mean | p90 | min |",
        "|---|---|---|---|---|",
    ]
    for name, stats in seq.items():
        lines.append(
            f"| {name} | {stats['median_ms']:.0f} ms | {stats['mean_ms']:.0f} ms | "
            f"{stats['p90_ms']:.0f} ms | {stats['min_ms']:.0f} ms |"
        )
    worker = seq["fresh worker"]["median_ms"] - seq["plain"]["median_ms"]
    env = seq["genv.ray"]["median_ms"] - seq["fresh worker"]["median_ms"]
    total = seq["genv.ray"]["median_ms"] - seq["plain"]["median_ms"]
    batch = results["batch_s"]
    lines += [
        "",
        f"Added per task (medians): {total:.0f} ms in all: {worker:.0f} ms for a worker of "
        f"its own, {env:.0f} ms for the environment itself.",
        "",
        f"{results['batch']} calls submitted at once (4 at a time on 2 GPUs; mean of 2): "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in batch.items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    import ray

    root = Path(tempfile.mkdtemp(prefix="genv-raybench-", dir="/tmp"))
    try:
        _setup(root)
        ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False,
                 log_to_driver=False, _temp_dir=str(root / "ray"))
        try:
            results = measure()
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "ray_startup.json").write_text(json.dumps(results, indent=2))
    text = report(results)
    print(text)
    if args.write:
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
