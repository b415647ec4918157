"""The score of a mutation run, per file: killed, survived, equivalent.

    python bench/mutation_score.py RESULTS [--minimum 95] [--markdown]

RESULTS is what ``mutmut results --all true`` prints (one ``name: status`` a line). A mutant
listed in bench/mutation-equivalent.txt cannot change behaviour (the reason is given there):
it counts as equivalent, not as survived, and is left out of the score. Any other mutant that
no test killed (survived, no tests, timeout counted as killed) counts against the score.
Exit status 1 when the score over all files is under the minimum, or when the list names a
mutant the run did not make (a list that no longer fits the code).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

EQUIVALENT = Path(__file__).resolve().parent / "mutation-equivalent.txt"
KILLED = {"killed", "timeout"}  # a mutant that hangs the tests is caught too
LINE = re.compile(r"^\s*(\S+): (.+?)\s*$")


def module_path(mutant: str) -> str:
    """``genv.domain.state.xǁStateǁlookup__mutmut_3`` -> ``src/genv/domain/state.py``."""
    module = mutant.split(".x", 1)[0] if ".x" in mutant else mutant.rsplit(".", 1)[0]
    return "src/" + module.replace(".", "/") + ".py"


def equivalents(path: Path = EQUIVALENT) -> dict[str, str]:
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.partition(" ")
            found[name] = reason.strip()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--minimum", type=float, default=95.0)
    parser.add_argument("--markdown", action="store_true", help="a table for the docs")
    args = parser.parse_args()

    statuses = {}
    for line in args.results.read_text(encoding="utf-8").splitlines():
        match = LINE.match(line)
        if match:
            statuses[match.group(1)] = match.group(2)
    listed = equivalents()
    stale = sorted(set(listed) - set(statuses))
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    left: list[str] = []
    for mutant, status in sorted(statuses.items()):
        kind = "killed" if status in KILLED else "equivalent" if mutant in listed else "survived"
        counts[module_path(mutant)][kind] += 1
        if kind == "survived":
            left.append(f"{mutant}: {status}")

    rows = [("file", "mutants", "killed", "survived", "equivalent", "score")]
    total: Counter[str] = Counter()
    for path in sorted(counts):
        total.update(counts[path])
        rows.append(_row(path, counts[path]))
    rows.append(_row("all", total))
    if args.markdown:
        for i, row in enumerate(rows):
            print("| " + " | ".join(row) + " |")
            if i == 0:
                print("|" + " --- |" * len(row))
    else:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    for line in left:
        print("not killed:", line)
    for name in stale:
        print("listed as equivalent but not made by this run:", name)
    score = _score(total)
    return 0 if score >= args.minimum and not stale else 1


def _score(counts: Counter[str]) -> float:
    tested = counts["killed"] + counts["survived"]
    return 100.0 * counts["killed"] / tested if tested else 100.0


def _row(label: str, counts: Counter[str]) -> tuple[str, ...]:
    made = counts["killed"] + counts["survived"] + counts["equivalent"]
    return (
        label,
        str(made),
        str(counts["killed"]),
        str(counts["survived"]),
        str(counts["equivalent"]),
        f"{_score(counts):.1f} %",
    )


if __name__ == "__main__":
    sys.exit(main())
