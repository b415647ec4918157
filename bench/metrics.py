"""Benchmark of the metrics: the daemon's CPU per cycle with and without ``--metrics-port``,
and how long a scrape of ``genv monitor`` takes at 1,000 environments.

    sudo python bench/metrics.py            # about 8 minutes: bench/METRICS.md
    sudo python bench/metrics.py --quick    # about 3 minutes: bench/out/METRICS.md

The machine is the benchmark's (bench/README.md): 8 GPUs behind the NVML stand-in, real users
and processes. The daemon runs ``genv enforce --interval 1 --non-env-processes`` as in
bench/run.py; "with metrics" adds ``--metrics-port``, scraped every 15 s (Prometheus's
default) or every second (the harsh case). Runs alternate, and each number is the median of
the rounds. The scrape is timed from the benchmark's side (wall time
of one HTTP GET of the whole page), the daemon's share included in its CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from genvbench import host, measure, procstat  # noqa: E402
from genvbench.machine import Population, write_machine, write_project_state  # noqa: E402
from genvbench.tools import (  # noqa: E402
    PROJECT_NVML,
    STANDINS,
    Tool,
    build_nvml,
    log,
    project_venv,
)

USERS = 4
MAIN = (60, 300)
SCRAPE_LAYOUTS = ((1000, 1000), (1000, 5000))
OFF, ON_15, ON_1 = "off", "on, scraped every 15 s", "on, scraped every 1 s"
# kind of machine -> metrics modes (seconds between scrapes; None: no --metrics-port)
MODES = {
    "steady": {OFF: None, ON_15: 15.0, ON_1: 1.0},
    "changing": {OFF: None, ON_15: 15.0, ON_1: 1.0},
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fetch(url: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as answer:
        page = answer.read()
    return time.perf_counter() - start, page


class Scraper:
    """GETs ``url`` every ``period`` seconds in the background, timing each."""

    def __init__(self, url: str, period: float = 1.0) -> None:
        self.url = url
        self.period = period
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                took, _ = fetch(self.url)
            except OSError:
                continue  # the daemon is not up yet
            self.latencies.append(took)


def cycles_counted(url: str) -> float:
    _, page = fetch(url)
    return next(
        float(line.split()[-1])
        for line in page.decode().splitlines()
        if line.startswith("genv_enforce_cycles_total")
    )


def daemon_cpu(tool: Tool, scratch: Path, window: float, scrape_every: float | None) -> dict:
    """CPU per cycle of ``genv enforce --interval 1`` (with ``--metrics-port``, scraped every
    ``scrape_every`` seconds, unless None), over ``window`` seconds between two idle moments.
    Cycles are counted by the daemon itself when it has metrics, else as bursts of CPU."""
    metrics = scrape_every is not None
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    extra = ("--metrics-port", str(port)) if metrics else ()
    with open(scratch / "daemon.err", "w") as err:
        daemon = subprocess.Popen(
            tool.command("enforce", "--interval", "1", *measure.RULES, *extra),
            env=tool.environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            time.sleep(measure.WARMUP_CYCLES + 1.5)
            if daemon.poll() is not None:
                raise RuntimeError((scratch / "daemon.err").read_text()[-2000:])
            bursts = procstat.BurstCounter(daemon.pid, gap=0.1)
            with bursts, Scraper(url, scrape_every or 1.0) as scraper:
                # The daemon's own count is read just outside the window (a cycle takes about
                # a millisecond a second, so none ends in between): the CPU of those two
                # reads is not the metrics' cost, the scrapes inside the window are.
                before = cycles_counted(url) if metrics else 0.0
                first = procstat.idle_sample(daemon.pid)
                time.sleep(window)
                last = procstat.idle_sample(daemon.pid)
                after = cycles_counted(url) if metrics else 0.0
            cycles = int(after - before) if metrics else bursts.bursts(first.when, last.when)
            cpu = last.seconds_since(first)
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
    return {
        "window_s": last.when - first.when,
        "cycles": cycles,
        "cpu_s": cpu,
        "cpu_per_cycle_s": cpu / max(cycles, 1),
        "scrapes": len(scraper.latencies) if metrics else 0,
        "scrape_s": statistics.median(scraper.latencies) if scraper.latencies else None,
    }


def scrape_latency(tool: Tool, scratch: Path, runs: int) -> dict:
    port = free_port()
    err = open(scratch / "monitor.err", "w")  # noqa: SIM115 - closed below
    monitor = subprocess.Popen(
        tool.command("monitor", "-p", str(port), "-i", "5", "--config-dir", str(scratch / "m")),
        env=tool.environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _, page = fetch(url)
                break
            except OSError:
                if monitor.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((scratch / "monitor.err").read_text()[-2000:]) from None
                time.sleep(0.2)
        fetch(url)
        latencies = []
        for _ in range(runs):
            took, page = fetch(url)
            latencies.append(took)
        text = page.decode()
        series = [line for line in text.splitlines() if line and not line.startswith("#")]
        collection = next(
            float(line.split()[-1])
            for line in series
            if line.startswith("genv_exporter_collection_duration_seconds")
        )
        return {
            "scrape_s": latencies,
            "page_bytes": len(page),
            "series": len(series),
            "collection_s": collection,
            "process_series": sum(1 for line in series if line.startswith("genv_process_")),
        }
    finally:
        monitor.send_signal(signal.SIGTERM)
        monitor.wait(timeout=30)
        err.close()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(results: dict) -> str:
    rounds = results["daemon"]
    lines = [
        "# Metrics benchmark",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; "
        f"{results['date']}; `{results['command']}`. See the docstring of `bench/metrics.py`.",
        "",
        "## The daemon's CPU per cycle, with and without `--metrics-port`",
        "",
        f"E={MAIN[0]} environments, P={MAIN[1]} GPU processes, `--interval 1`, "
        "CPU time of all its threads (schedstat); median of the rounds.",
        "",
        f"| machine | metrics {OFF} | metrics {ON_15} | metrics {ON_1} | scrape (wall) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind in MODES:
        per = {
            mode: median([r[kind][mode]["cpu_per_cycle_s"] for r in rounds]) for mode in MODES[kind]
        }
        scrape = median([r[kind][ON_1]["scrape_s"] for r in rounds if r[kind][ON_1]["scrape_s"]])
        cells = [f"{per[OFF] * 1e3:.3f} ms"] + [
            f"{per[mode] * 1e3:.3f} ms ({(per[mode] / per[OFF] - 1) * 100:+.1f} %)"
            for mode in (ON_15, ON_1)
        ]
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {scrape * 1e3:.2f} ms |")
    lines += ["", "Each round (ms of CPU per cycle; cycles counted):", ""]
    for number, r in enumerate(rounds, 1):
        parts = [
            f"{kind} {mode}: {r[kind][mode]['cpu_per_cycle_s'] * 1e3:.3f} ({r[kind][mode]['cycles']})"
            for kind in MODES
            for mode in MODES[kind]
        ]
        lines.append(f"- round {number}: " + "; ".join(parts))
    lines += [
        "",
        "Target: metrics on within 10 % of metrics off (Prometheus scrapes every 15 s by "
        "default; every second is the harsh case).",
        "",
        "## A scrape of `genv monitor`",
        "",
        "Wall time of one GET of the whole page (the page is rendered once per collection, "
        "so a scrape costs a copy); the collection itself runs every `-i` seconds apart "
        "from scrapes.",
        "",
        "| environments | GPU processes | scrape median | scrape max | page | series "
        "| per-process series | one collection |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for point in results["scrape"]:
        lines.append(
            f"| {point['envs']} | {point['processes']} | {median(point['scrape_s']) * 1e3:.2f} ms "
            f"| {max(point['scrape_s']) * 1e3:.2f} ms | {point['page_bytes'] / 1024:.0f} KiB "
            f"| {point['series']} | {point['process_series']} | {point['collection_s'] * 1e3:.1f} ms |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 8 s windows")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run it as root: it creates Linux users and runs processes as them", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    rounds, window = (1, 15.0) if args.quick else (3, 25.0)
    scratch = Path(tempfile.mkdtemp(prefix="genvbench-metrics-"))
    scratch.chmod(0o755)
    machine_file = scratch / "machine.json"
    state = scratch / "state"
    state.mkdir()
    log("building the NVML stand-in with cc")
    nvml = build_nvml(out)
    log("installing this checkout into its own virtual environment")
    genv = project_venv(out)
    tool = Tool(
        PROJECT_NVML,
        genv,
        {
            "GENV_FAKE_MACHINE": str(machine_file),
            "GENV_TMPDIR": str(state / "project"),
            "GENV_GPU_BACKEND": "nvml",
            "LD_LIBRARY_PATH": str(nvml),
            "PATH": f"{STANDINS}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        },
    )
    results: dict = {
        "machine": {"cpu": host.machine_facts().get("CPU", "?"), "cores": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d"),
        "command": "sudo python bench/metrics.py" + (" --quick" if args.quick else ""),
        "daemon": [],
        "scrape": [],
    }
    host.raise_limits(max(p for _, p in SCRAPE_LAYOUTS) + max(e for e, _ in SCRAPE_LAYOUTS) + 100)
    pool = host.ProcessPool()
    with host.bench_users(USERS) as users:
        try:
            population = Population(pool, users)
            layout = population.layout(*MAIN)
            write_machine(machine_file, layout)
            write_project_state(state / "project", layout, tool.python)
            for number in range(rounds):
                found: dict = {}
                for kind, modes in MODES.items():
                    for mode, scrape_every in modes.items():
                        log(f"round {number + 1}: daemon, {kind} machine, metrics {mode}")
                        churn = measure.Churn(machine_file, layout) if kind == "changing" else None
                        if churn is not None:
                            churn.__enter__()
                        try:
                            found.setdefault(kind, {})[mode] = daemon_cpu(
                                tool, scratch, window, scrape_every
                            )
                        finally:
                            if churn is not None:
                                churn.__exit__()
                results["daemon"].append(found)
            for envs, processes in SCRAPE_LAYOUTS:
                log(f"genv monitor at E={envs}, P={processes}")
                layout = population.layout(envs, processes)
                write_machine(machine_file, layout)
                write_project_state(state / "project", layout, tool.python)
                point = scrape_latency(tool, scratch, 20 if args.quick else 50)
                results["scrape"].append({"envs": envs, "processes": processes, **point})
        finally:
            log("stopping every process and removing the users")
            pool.stop_all()
    (out / "metrics.json").write_text(json.dumps(results, indent=1))
    target = out if args.quick else HERE
    (target / "METRICS.md").write_text(report(results))
    log(f"wrote {target / 'METRICS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
