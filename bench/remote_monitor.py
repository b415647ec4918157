"""``genv remote monitor`` over 1, 8, 32 and 64 simulated hosts (the cluster benchmark's hosts:
each a real sshd on this machine, 8 GPUs, 4 environments, 8 GPU processes).

    sudo .venv/bin/python bench/remote_monitor.py           # bench/REMOTE_MONITOR.md
    sudo .venv/bin/python bench/remote_monitor.py --quick   # 1 and 8 hosts, into bench/out/

For each host count: the time from start until every host is on the page, the CPU of one
collection (``-i 1``, a window after warm-up; the controller with its ssh clients, and every
host's side: sshd, sudo, ``genv usage serve --usage``), and a scrape (median of 50 GETs of
the page, and its size). ``genv remote top`` reads the hosts the same way (ClusterSource).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from genvbench.cluster import HZ, PROJECT, ClusterBench, _clean_env, _tree_ticks  # noqa: E402
from genvbench.host import ProcessPool, bench_users, machine_facts, raise_limits  # noqa: E402
from genvbench.tools import build_nvml, log, peer_venv, project_venv  # noqa: E402

WINDOW = 20  # collections measured, one a second
SCRAPES = 50


def _page(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return answer.read()


def _hosts_up(port: int) -> int:
    try:
        page = _page(port).decode()
    except OSError:
        return -1
    return sum(1 for line in page.splitlines()
               if line.startswith("genv_host_up{") and line.endswith(" 1.0"))


def _collected(port: int) -> float:
    for line in _page(port).decode().splitlines():
        if line.startswith("genv_exporter_last_collection_timestamp_seconds "):
            return float(line.split()[1])
    return 0.0


def _until(condition, timeout: float, message: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(message)
        time.sleep(0.05)


def measure_size(bench: ClusterBench, genv: str, size: int, out: Path, window: int) -> dict:
    bench.use(PROJECT, size)
    port = 19400 + size
    names = ",".join(h.name for h in bench.hosts[:size])
    argv = [genv, "remote", "-H", names, "-t", "60", "--parallel", "64", "monitor",
            "-p", str(port), "-i", "1", "--config-dir", str(out / "monitor"),
            "--log-level", "warning"]
    started = time.monotonic()
    process = subprocess.Popen(argv, env=_clean_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _until(lambda: _hosts_up(port) == size, 300, f"{size} hosts never all answered")
        ready = time.monotonic() - started
        first = _collected(port)
        _until(lambda: _collected(port) >= first + 3, 60, "no more collections")  # warm-up
        # Not looked at during the window: every scrape costs the exporter CPU of its own.
        begin = _collected(port)
        before = (_tree_ticks([process.pid]) / HZ, bench._host_ticks(size))
        time.sleep(window)
        after = (_tree_ticks([process.pid]) / HZ, bench._host_ticks(size))
        span = _collected(port) - begin  # seconds, one collection a second
        latencies, size_bytes = [], 0
        for _ in range(SCRAPES):
            began = time.perf_counter()
            size_bytes = len(_page(port))
            latencies.append(time.perf_counter() - began)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    controller = (after[0] - before[0]) / span
    hosts = (after[1] - before[1]) / span
    return {"ready_s": ready, "controller_s": controller, "hosts_s": hosts,
            "cpu_s": controller + hosts, "scrape_s": statistics.median(latencies),
            "page_bytes": size_bytes}


def report(results: dict, folder: Path) -> None:
    lines = [
        "# `genv remote monitor` on 1 to 64 simulated hosts",
        "",
        "Written by `bench/remote_monitor.py`. Every host a real sshd on this machine (8 GPUs,",
        "4 environments, 8 GPU processes), its agent `sudo -n genv usage serve --usage` on one",
        "SSH session that stays open; `-i 1`. CPU per collection: the controller with its ssh",
        "clients, and every host's side (sshd, sudo, the agent), all on this one machine.",
        "",
        f"Machine: {results['machine'].get('CPU', '?')}, {results['machine'].get('cores', '?')}"
        " cores.",
        "",
        "| hosts | all hosts on the page after | CPU per collection: controller | hosts "
        "| all | scrape (median) | page |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for size in results["sizes"]:
        run = results["runs"][str(size)]
        lines.append(
            f"| {size} | {run['ready_s']:.1f} s | {run['controller_s'] * 1000:.1f} ms "
            f"| {run['hosts_s'] * 1000:.1f} ms | {run['cpu_s'] * 1000:.1f} ms "
            f"| {run['scrape_s'] * 1000:.2f} ms | {run['page_bytes'] / 1024:.0f} KiB |"
        )
    lines += [
        "",
        "Per host and collection, both sides are flat in the number of hosts: the host's",
        "agent reads its machine and answers one line; the controller decodes it and renders",
        "that host's part of the page (each host here adds about 10 KiB of series). A scrape",
        "is a copy of the page rendered after the last collection, whatever the host count.",
        "These are per collection: at `genv remote monitor`'s default `-i 10`, one every 10 s.",
    ]
    (folder / "REMOTE_MONITOR.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 8 hosts")
    parser.add_argument("--report-only", type=Path, metavar="REMOTE_MONITOR_JSON")
    args = parser.parse_args()
    if args.report_only:
        report(json.loads(args.report_only.read_text()), HERE)
        return 0
    if os.geteuid() != 0:
        print("run it as root: it starts sshd servers and creates Linux users", file=sys.stderr)
        return 2
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    sizes = [1, 8] if args.quick else [1, 8, 32, 64]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    genv = project_venv(out)[0]
    python = str(Path(genv).with_name("python"))
    results: dict = {"machine": machine_facts(), "sizes": sizes, "runs": {}}
    raise_limits(12 * max(sizes) + 1000)
    pool = ProcessPool()
    with bench_users(2) as users:
        bench = ClusterBench(out, genv, str(peer_venv(out) / "bin" / "genv"), build_nvml(out),
                             python, users, pool)
        try:
            log(f"starting {max(sizes)} simulated hosts")
            bench.setup(max(sizes))
            for size in sizes:
                log(f"genv remote monitor: {size} hosts")
                results["runs"][str(size)] = measure_size(bench, genv, size, out, WINDOW)
                log(f"  {json.dumps(results['runs'][str(size)])}")
        finally:
            bench.teardown()
            pool.stop_all()
    (out / "remote_monitor.json").write_text(json.dumps(results, indent=2))
    report(results, out if args.quick else HERE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
