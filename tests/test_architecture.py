"""The layers of docs/architecture.md, checked: what each folder may import, and that front
ends change state only through the application layer (genv.core)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "genv"

# folder -> the genv folders its modules may import (besides themselves and genv.errors)
ALLOWED: dict[str, set[str]] = {
    "domain": set(),
    "system": {"domain"},
    "backends": {"domain", "system"},
    "store": {"domain", "system"},
    "core": {"domain", "system", "backends", "store"},
    "enforce": {"domain", "system", "backends", "store", "core"},
    "smi": {"domain", "system", "backends", "store", "core"},
    "metrics": {"domain", "system", "backends", "store", "core", "enforce", "remote"},
    "remote": {"domain", "system", "backends", "store", "core", "enforce"},
    "sdk": {"domain", "system", "store", "core"},
    "ray": {"domain", "system", "store", "core", "sdk", "backends"},
    "top": {"domain", "system", "backends", "store", "core", "metrics"},
    "cli": {"domain", "system", "backends", "store", "core", "enforce", "smi", "metrics",
            "remote", "sdk", "ray", "top"},
}
# Front ends: they call genv.core, and never open a store transaction themselves.
FRONT_ENDS = ("cli", "sdk", "smi", "ray", "remote", "metrics", "top")


def _layer(path: Path) -> str:
    relative = path.relative_to(SRC)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if _layer(p) not in ("__init__", "__main__",
                                                                     "errors", "shell"))


def _imported_layers(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "genv":
                names = [f"genv.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "genv" and len(parts) > 1 and parts[1] != "errors" \
                    and not parts[1].startswith("__"):
                found.add(parts[1])
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_each_module_imports_only_the_layers_below_it(path: Path) -> None:
    layer = _layer(path)
    assert layer in ALLOWED, f"{layer} is not a layer of docs/architecture.md"
    wrong = _imported_layers(path) - ALLOWED[layer] - {layer}
    assert not wrong, f"{path.relative_to(SRC)} ({layer}) imports {sorted(wrong)}"


@pytest.mark.parametrize(
    "path", [p for p in _modules() if _layer(p) in FRONT_ENDS],
    ids=lambda p: str(p.relative_to(SRC)),
)
def test_front_ends_change_state_only_through_the_core(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert ".transaction(" not in text, f"{path.relative_to(SRC)} opens a store transaction"


def test_no_module_shadows_a_standard_library_name() -> None:
    import sys

    shadows = [p for p in SRC.rglob("*.py")
               if p.stem in sys.stdlib_module_names and p.stem not in ("__init__", "__main__")]
    assert not shadows, shadows


MAX_MODULE_LINES = 700  # docs/architecture.md: small modules, read in one sitting


def test_modules_stay_small() -> None:
    too_big = {
        str(path.relative_to(SRC)): count
        for path in SRC.rglob("*.py")
        if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not too_big, f"split these modules (lines): {too_big}"
