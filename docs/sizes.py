"""The size of each folder of ``src/genv``, as the table in docs/architecture.md shows it.

    python docs/sizes.py            # print the table (markdown)
    python docs/sizes.py --write    # put it into docs/architecture.md, between its markers
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "genv"
DOC = ROOT / "docs" / "architecture.md"
BEGIN, END = "<!-- sizes: begin -->", "<!-- sizes: end -->"


def lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def table() -> str:
    folders: dict[str, list[Path]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        folder = path.parent.relative_to(PACKAGE).as_posix()
        folders.setdefault("genv/" if folder == "." else f"{folder}/", []).append(path)
    rows = ["| folder | modules | lines | largest module (lines) |", "|---|---|---|---|"]
    total_files = total_lines = 0
    for folder, paths in sorted(folders.items()):
        sizes = {path.name: lines(path) for path in paths}
        largest = max(sizes, key=lambda name: sizes[name])
        rows.append(f"| `{folder}` | {len(paths)} | {sum(sizes.values())} | "
                    f"`{largest}` ({sizes[largest]}) |")
        total_files += len(paths)
        total_lines += sum(sizes.values())
    rows.append(f"| all of `src/genv` | {total_files} | {total_lines} | |")
    return "\n".join(rows)


def main() -> int:
    text = table()
    if "--write" not in sys.argv[1:]:
        print(text)
        return 0
    doc = DOC.read_text()
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    DOC.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
