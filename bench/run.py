"""Benchmark: this project's ``genv enforce`` against genv 1.4.3, same run, same machine.

    sudo python bench/run.py            # the full run (about 8 minutes): bench/RESULTS.md
    sudo python bench/run.py --quick    # a smaller one (about 3 minutes): bench/out/

See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from genvbench import report  # noqa: E402
from genvbench.suite import Bench, Settings  # noqa: E402
from genvbench.tools import log  # noqa: E402

NOTES = HERE / "genvbench" / "notes.md"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer runs, shorter windows, E and P up to 100 and 1000; "
                             "writes into bench/out/ unless --results says otherwise")
    parser.add_argument("--results", type=Path,
                        help="folder for RESULTS.md and scale.png (default: bench/, or "
                             "bench/out/ with --quick)")
    parser.add_argument("--report-only", type=Path, metavar="RESULTS_JSON",
                        help="only write the report again from a results.json of a run")
    return parser.parse_args()


def write_report(results: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    notes = NOTES.read_text() if NOTES.exists() else ""
    (folder / "RESULTS.md").write_text(report.markdown(results, notes))
    report.plot(results, folder / "scale.png")
    log(f"wrote {folder / 'RESULTS.md'} and {folder / 'scale.png'}")


def main() -> int:
    args = parse()
    out = HERE / "out"
    folder = args.results or (out if args.quick else HERE)
    if args.report_only:
        write_report(json.loads(args.report_only.read_text()), folder)
        return 0
    if os.geteuid() != 0:
        print("run it as root: it creates Linux users and runs processes as them",
              file=sys.stderr)
        return 2
    out.mkdir(exist_ok=True)
    # Stopped with SIGTERM (a CI timeout, kill): unwind like Ctrl-C, so that the users and
    # processes it made are removed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    settings = Settings.quick() if args.quick else Settings.full()
    results = Bench(settings, out).run()
    results["duration_s"] = time.monotonic() - started
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(results, folder)
    log(f"done in {results['duration_s'] / 60:.1f} minutes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
