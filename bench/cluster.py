"""Cluster benchmark: ``genv remote enforce`` of this project and of genv 1.4.3, one run,
over 1, 8, 32 and 64 simulated hosts (each a real sshd on this machine).

    sudo .venv/bin/python bench/cluster.py            # bench/CLUSTER.md, bench/cluster.png
    sudo .venv/bin/python bench/cluster.py --quick    # 1 and 8 hosts, into bench/out/
    python bench/cluster.py --report-only bench/out/cluster.json

See bench/README.md ("The cluster") for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from genvbench import cluster_report  # noqa: E402
from genvbench.cluster import PEER, PROJECT, ClusterBench  # noqa: E402
from genvbench.host import ProcessPool, bench_users, machine_facts, raise_limits  # noqa: E402
from genvbench.tools import build_nvml, log, peer_venv, project_venv  # noqa: E402


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 8 hosts, fewer runs")
    parser.add_argument("--results", type=Path, help="folder for CLUSTER.md and cluster.png")
    parser.add_argument("--report-only", type=Path, metavar="CLUSTER_JSON")
    return parser.parse_args()


def measure(args: argparse.Namespace, out: Path) -> dict:
    sizes = [1, 8] if args.quick else [1, 8, 32, 64]
    nvml = build_nvml(out)
    peer = peer_venv(out)
    genv = project_venv(out)
    python = str(Path(genv[0]).with_name("python")) if len(genv) == 1 else genv[0]
    results: dict = {"machine": machine_facts(), "sizes": sizes, "runs": {}}
    raise_limits(12 * max(sizes) + 1000)
    pool = ProcessPool()
    with bench_users(2) as users:
        bench = ClusterBench(out, genv[0], str(peer / "bin" / "genv"), nvml, python, users,
                             pool)
        try:
            log(f"starting {max(sizes)} simulated hosts")
            bench.setup(max(sizes))
            for size in sizes:
                for tool in (PROJECT, PEER):
                    repeats = 3 if tool == PROJECT or size <= 8 else (1 if args.quick else 2)
                    log(f"{tool}: {size} hosts, one-shot x{repeats}")
                    shots = [bench.one_shot(tool, size) for _ in range(repeats)]
                    window = 20 if tool == PROJECT else 2
                    log(f"{tool}: {size} hosts, daemon ({window} cycles)")
                    daemon = bench.daemon(tool, size, window)
                    results["runs"][f"{tool}|{size}"] = {
                        "one_shot": {key: statistics.median(s[key] for s in shots)
                                     for key in ("wall_s", "controller_s", "hosts_s", "cpu_s")},
                        "one_shot_status": [s["status"] for s in shots],
                        "daemon": daemon,
                    }
                    log(f"  {json.dumps(results['runs'][f'{tool}|{size}'])}")
        finally:
            bench.teardown()
            pool.stop_all()
    return results


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(143)


def main() -> int:
    args = parse()
    out = HERE / "out"
    folder = args.results or (out if args.quick else HERE)
    if args.report_only:
        cluster_report.write(json.loads(args.report_only.read_text()), folder)
        return 0
    if os.geteuid() != 0:
        print("run it as root: it starts sshd servers and creates Linux users", file=sys.stderr)
        return 2
    out.mkdir(exist_ok=True)
    signal.signal(signal.SIGTERM, _terminated)  # clean up (users, servers) on SIGTERM too
    results = measure(args, out)
    (out / "cluster.json").write_text(json.dumps(results, indent=2))
    cluster_report.write(results, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
