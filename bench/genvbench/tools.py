"""The three contestants and how to run each: the project through NVML, the project through
``nvidia-smi``, and genv 1.4.3 (from PyPI, in its own virtual environment)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STANDINS = REPO / "standins"
PEER_VERSION = "1.4.3"
PEER_FALLBACK = Path("/opt/genv-peer")

PROJECT_NVML = "project (NVML)"
PROJECT_SMI = "project (nvidia-smi)"
PEER = f"genv {PEER_VERSION}"


@dataclass(frozen=True)
class Tool:
    name: str
    genv: tuple[str, ...]  # the command that is ``genv``
    env: dict[str, str] = field(default_factory=dict)
    is_peer: bool = False

    def command(self, *arguments: str) -> list[str]:
        return [*self.genv, *arguments]

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.env}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def build_nvml(out: Path) -> Path:
    """``libnvidia-ml.so.1`` built from the stand-in's source with ``cc``; its folder."""
    folder = out / "nvml"
    subprocess.run(["sh", str(STANDINS / "build-nvml.sh"), str(folder)], check=True,
                   capture_output=True)
    return folder


def peer_venv(out: Path) -> Path:
    """A virtual environment with genv 1.4.3 from PyPI (falls back to an existing one)."""
    venv = out / "peer"
    if _has_peer(venv):
        return venv
    try:
        if venv.exists():
            shutil.rmtree(venv)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                       capture_output=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"genv=={PEER_VERSION}"],
                       check=True, capture_output=True, timeout=600)
        if _has_peer(venv):
            return venv
    except (subprocess.SubprocessError, OSError) as error:
        log(f"installing genv {PEER_VERSION} from PyPI failed ({error})")
    if _has_peer(PEER_FALLBACK):
        log(f"using the existing installation at {PEER_FALLBACK}")
        return PEER_FALLBACK
    raise SystemExit(f"genv {PEER_VERSION} is not available: pip install failed")


def _has_peer(venv: Path) -> bool:
    if not (venv / "bin" / "genv").exists():
        return False
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib.metadata as m; print(m.version('genv'))"],
        capture_output=True, text=True, check=False,
    )
    return result.stdout.strip() == PEER_VERSION


def project_genv() -> tuple[str, ...]:
    """The project's console script next to this interpreter (not a pyenv shim, which
    would add tens of milliseconds to every call), else ``python -m genv``."""
    script = Path(sys.executable).parent / "genv"
    if script.exists():
        return (str(script),)
    return (sys.executable, "-m", "genv")


def make_tools(nvml_dir: Path, peer: Path, machine: Path, state: Path) -> list[Tool]:
    """The three tools, each with its own state folder under ``state``."""
    path = f"{STANDINS}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    common = {"GENV_FAKE_MACHINE": str(machine), "PATH": path}
    return [
        Tool(PROJECT_NVML, project_genv(), {
            **common, "GENV_TMPDIR": str(state / "project"), "GENV_GPU_BACKEND": "nvml",
            "LD_LIBRARY_PATH": str(nvml_dir),
        }),
        Tool(PROJECT_SMI, project_genv(), {
            **common, "GENV_TMPDIR": str(state / "project"), "GENV_GPU_BACKEND": "nvidia-smi",
        }),
        Tool(PEER, (str(peer / "bin" / "genv"),), {
            **common, "GENV_TMPDIR": str(state / "peer"),
        }, is_peer=True),
    ]


def versions(tools: list[Tool]) -> dict[str, str]:
    """``genv version`` of each tool, and the NVML binding the project uses."""
    found = {}
    for tool in tools:
        result = subprocess.run(tool.command("version"), env=tool.environment(),
                                capture_output=True, text=True, check=False)
        found[tool.name] = (result.stdout.strip() or result.stderr.strip()).splitlines()[0]
    try:
        from importlib.metadata import version

        found["nvidia-ml-py"] = version("nvidia-ml-py")
        found["psutil"] = version("psutil")
    except Exception as error:  # noqa: BLE001 - informative only
        found["nvidia-ml-py"] = f"unknown ({error})"
    return found
