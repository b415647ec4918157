"""Profile the daemon's cycle in-process, on the benchmark's simulated machine.

    sudo .venv/bin/python bench/profile_cycle.py --envs 60 --processes 300
    sudo .venv/bin/python bench/profile_cycle.py --envs 1000 --processes 5000 --cprofile 25
    sudo .venv/bin/python bench/profile_cycle.py --change one --cprofile 25 --backend fake

Sets up the machine of bench/run.py (real users, real ``sleep``s, the project's state written
through its store, the NVML stand-in built with ``cc``), then runs, in a child process whose
``LD_LIBRARY_PATH`` finds the stand-in, the very objects ``genv enforce`` builds (Observer,
Store with its watcher, Enforcer, Reporter) and times each cycle with the thread's CPU clock:
the whole cycle, and its phases (GPU reading, state, observation, the rest). ``--change one``
rewrites one process's memory before each cycle (a machine where one thing changed);
``--cprofile N`` prints the N costliest functions (cumulative) over the measured cycles;
``--allocations`` counts the blocks a steady cycle leaves allocated and the peak it allocates
(tracemalloc). Numbers go to stdout; nothing is written in the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=60)
    parser.add_argument("--processes", type=int, default=300)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--change", choices=["none", "one"], default="none")
    parser.add_argument("--backend", choices=["nvml", "fake", "nvidia-smi"], default="nvml")
    parser.add_argument("--cprofile", type=int, default=0, metavar="N")
    parser.add_argument("--allocations", action="store_true")
    parser.add_argument("--metrics", action="store_true",
                        help="with the daemon's metrics (--metrics-port) as a reporter")
    parser.add_argument("--no-events", action="store_true",
                        help="without the kernel's process events (the per-cycle check)")
    parser.add_argument("--pause", type=float, default=0.02,
                        help="seconds between measured cycles (caches go cold)")
    parser.add_argument("--py-spy", type=Path, metavar="SVG",
                        help="also sample the measured cycles with py-spy into SVG")
    parser.add_argument("--one-shot", action="store_true",
                        help="profile one `genv enforce --interval 0` (start-up included) instead")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse()
    if args.child is not None:
        return child(args)
    if os.geteuid() != 0:
        print("run it as root: it creates Linux users and runs processes as them",
              file=sys.stderr)
        return 2
    from genvbench import host
    from genvbench.machine import Population, write_machine, write_project_state
    from genvbench.tools import STANDINS, build_nvml

    out = HERE / "out"
    out.mkdir(exist_ok=True)
    nvml = build_nvml(out)
    scratch = Path(tempfile.mkdtemp(prefix="genvprofile-"))
    scratch.chmod(0o755)
    machine = scratch / "machine.json"
    state = scratch / "state"
    state.mkdir()
    host.raise_limits(args.envs + args.processes + 100)
    pool = host.ProcessPool()
    with host.bench_users(4, prefix="genvprof") as users:
        try:
            population = Population(pool, users)
            layout = population.layout(args.envs, args.processes)
            write_machine(machine, layout)
            write_project_state(state / "project", layout, sys.executable)
            plan = {
                "machine": str(machine),
                "pids": [p.sleeper.pid for p in layout.processes],
                "devices": [p.device for p in layout.processes],
            }
            (scratch / "plan.json").write_text(json.dumps(plan))
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("GENV_")},
                "GENV_FAKE_MACHINE": str(machine),
                "GENV_TMPDIR": str(state / "project"),
                "GENV_GPU_BACKEND": args.backend,
                "LD_LIBRARY_PATH": str(nvml),
                "PATH": f"{STANDINS}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            }
            command = [sys.executable, __file__, *sys.argv[1:], "--child", str(scratch)]
            if args.one_shot:
                one_shot = ["-m", "genv", "enforce", "--interval", "0", "--non-env-processes"]
                # One run first, not profiled, as bench/run.py does: it writes byte code
                # and what a first run publishes (root's holdings), as a running machine has.
                subprocess.run([sys.executable, *one_shot], env=env, check=False,
                               capture_output=True)
                command = [sys.executable, "-X", "importtime", "-m", "cProfile", "-s",
                           "cumulative", *one_shot]
            return subprocess.run(command, env=env, check=False).returncode
        finally:
            pool.stop_all()


def child(args: argparse.Namespace) -> int:
    import cProfile
    import io
    import pstats
    import statistics
    import time

    from genv.backends import open_backend
    from genv.backends.machine_file import write_machine
    from genv.enforce.daemon import Enforcer
    from genv.enforce.executor import Detacher, Terminator
    from genv.enforce.observe import Observer
    from genv.enforce.report import Reporter
    from genv.enforce.rules import RuleConfig
    from genv.store import Store
    from genv.system import procfs
    from genv.system.proc_events import ProcessEvents
    from genv.system.watch import ProcessWatcher, raise_open_file_limit

    plan = json.loads((args.child / "plan.json").read_text())
    machine = Path(plan["machine"])
    starts = [procfs.start_of(pid) for pid in plan["pids"]]

    def rewrite(nudge: int) -> None:
        processes = [
            {"pid": pid, "device": device, "used_memory": f"{100 + (nudge if i == 0 else 0)}mi",
             "start": start}
            for i, (pid, device, start) in enumerate(
                zip(plan["pids"], plan["devices"], starts, strict=True))
        ]
        write_machine(machine, [{"total_memory": "80gi"}] * 8, processes)

    raise_open_file_limit()
    watcher = ProcessWatcher()
    store = Store(watcher=ProcessWatcher())
    events = None if args.no_events else ProcessEvents.open()
    observer = Observer(open_backend(), store, watcher, events)
    enforcer = Enforcer(observer, RuleConfig(non_env_processes=True), Terminator(10.0),
                        Detacher(store), Reporter(stream=io.StringIO()))
    if args.metrics:
        from genv.metrics.enforcement import EnforcementMetrics

        enforcer.add_reporter(EnforcementMetrics())
    phases: dict[str, list[float]] = {
        "gpus": [], "state": [], "begin": [], "holdings": [], "report": []}

    def timed(name, function):  # noqa: ANN001, ANN202
        def wrapper(*a, **k):  # noqa: ANN002, ANN003, ANN202
            start = time.thread_time_ns()
            try:
                return function(*a, **k)
            finally:
                phases[name].append((time.thread_time_ns() - start) / 1e6)
        return wrapper

    for _ in range(3):  # warm-up: every process read once, then watched
        enforcer.cycle()
    # Each phase timed where the cycle calls it (the rest is the observation and the rules).
    observer.backend.snapshot = timed("gpus", observer.backend.snapshot)  # type: ignore[method-assign]
    store.read = timed("state", store.read)  # type: ignore[method-assign]
    observer.inspector.begin = timed("begin", observer.inspector.begin)  # type: ignore[method-assign]
    store.publish_holdings = timed("holdings", store.publish_holdings)  # type: ignore[method-assign]
    enforcer.reporter.cycle = timed("report", enforcer.reporter.cycle)  # type: ignore[method-assign]
    profiler = cProfile.Profile() if args.cprofile else None
    spy = None
    if args.py_spy is not None:
        spy = subprocess.Popen(["py-spy", "record", "-r", "997", "-f", "raw", "-o", str(args.py_spy),
                                "-p", str(os.getpid()), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    if args.allocations:
        import tracemalloc

        tracemalloc.start()
    totals = []
    nudge = 0
    for _ in range(args.cycles):
        if args.change == "one":
            nudge = 1 - nudge
            rewrite(nudge)
        time.sleep(args.pause)  # caches go cold between cycles, a little, as in the daemon
        if args.allocations:
            before = tracemalloc.take_snapshot()
            tracemalloc.reset_peak()
        start = time.thread_time_ns()
        if profiler is not None:
            profiler.enable()
        enforcer.cycle()
        if profiler is not None:
            profiler.disable()
        totals.append((time.thread_time_ns() - start) / 1e6)
        if args.allocations:
            _, peak = tracemalloc.get_traced_memory()
            after = tracemalloc.take_snapshot()
            grown = sum(s.count_diff for s in after.compare_to(before, "filename"))
            phases.setdefault("allocated blocks kept", []).append(grown)
            phases.setdefault("peak KiB", []).append(peak / 1024)
    probe = subprocess.run([str(HERE / "out" / "nvml_cost"), "50", "20"],
                           capture_output=True, text=True, check=False)
    standin = json.loads(probe.stdout)["pass_us"] / 1e3 if probe.returncode == 0 else None
    if spy is not None:
        spy.send_signal(2)
        spy.wait()
    result = {
        "nvml_standin_ms": standin,
        "nvml_standin_calls": json.loads(probe.stdout) if probe.returncode == 0 else None,
        "E": args.envs, "P": args.processes, "backend": args.backend, "change": args.change,
        "events": events is not None, "metrics": args.metrics,
        "cycle_ms_median": statistics.median(totals), "cycle_ms_min": min(totals),
        **{f"{name}_median": statistics.median(values) for name, values in phases.items()},
    }
    print(json.dumps(result, indent=1))
    if profiler is not None:
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream)
        stats.sort_stats("tottime").print_stats(args.cprofile)
        stats.sort_stats("cumulative").print_stats(args.cprofile)
        print(stream.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
