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

    @property
    def python(self) -> str:
        """The interpreter of this tool's ``genv`` (its virtual environment's)."""
        if len(self.genv) > 1:
            return self.genv[0]
        return str(Path(self.genv[0]).with_name("python"))

    def environment(self) -> dict[str, str]:
        """This shell's environment without genv's variables, a library path or a ban on
        byte-code files (installed tools have theirs), then this tool's."""
        dropped = ("LD_LIBRARY_PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH")
        inherited = {key: value for key, value in os.environ.items()
                     if not key.startswith("GENV_") and key not in dropped}
        return {**inherited, **self.env}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def build_nvml(out: Path) -> Path:
    """The stand-ins built from source with ``cc`` into one folder, which is returned:
    ``libnvidia-ml.so.1`` (for ``LD_LIBRARY_PATH``) and the compiled ``nvidia-smi`` (first on
    ``PATH``: no launcher script in between, as with NVIDIA's own). Beside it,
    ``out/nvml_cost``: the NVML stand-in's own CPU per call (``nvml_cost.c``)."""
    folder = out / "nvml"
    subprocess.run(["sh", str(STANDINS / "build.sh"), str(folder)], check=True,
                   capture_output=True)
    source = Path(__file__).with_name("nvml_cost.c")
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-Wall", "-o", str(out / "nvml_cost"),
                    str(source), "-ldl"], check=True, capture_output=True)
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


def project_venv(out: Path) -> tuple[str, ...]:
    """``genv`` of this checkout, installed (editable) into its own virtual environment.

    Like genv 1.4.3 in its own: the same interpreter, and nothing else on its path (the base
    interpreter here may run ``.pth`` hooks at every start, tens of milliseconds that are no
    part of either tool). Falls back to the ``genv`` next to this interpreter.
    """
    venv = out / "project"
    script = venv / "bin" / "genv"
    if not _is_this_checkout(venv):
        try:
            if venv.exists():
                shutil.rmtree(venv)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                           capture_output=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-e", str(REPO)],
                           check=True, capture_output=True, timeout=600)
        except (subprocess.SubprocessError, OSError) as error:
            log(f"installing the project into {venv} failed ({error})")
    if _is_this_checkout(venv):
        return (str(script),)
    log("using the genv next to this interpreter")
    fallback = Path(sys.executable).parent / "genv"
    return (str(fallback),) if fallback.exists() else (sys.executable, "-m", "genv")


def _is_this_checkout(venv: Path) -> bool:
    if not (venv / "bin" / "genv").exists():
        return False
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import genv; print(genv.__file__)"],
        capture_output=True, text=True, check=False,
    )
    return result.stdout.strip().startswith(str(REPO / "src"))


def make_tools(
    genv: tuple[str, ...], nvml_dir: Path, peer: Path, machine: Path, state: Path
) -> list[Tool]:
    """The three tools, each with its own state folder under ``state``."""
    path = f"{nvml_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"  # the compiled nvidia-smi
    common = {"GENV_FAKE_MACHINE": str(machine), "PATH": path}
    return [
        Tool(PROJECT_NVML, genv, {
            **common, "GENV_TMPDIR": str(state / "project"), "GENV_GPU_BACKEND": "nvml",
            "LD_LIBRARY_PATH": str(nvml_dir),
        }),
        Tool(PROJECT_SMI, genv, {
            **common, "GENV_TMPDIR": str(state / "project"), "GENV_GPU_BACKEND": "nvidia-smi",
        }),
        Tool(PEER, (str(peer / "bin" / "genv"),), {
            **common, "GENV_TMPDIR": str(state / "peer"),
        }, is_peer=True),
    ]


def versions(tools: list[Tool]) -> dict[str, str]:
    """``genv version`` of each tool, and the C compiler that built the NVML stand-in."""
    found = {}
    for tool in tools:
        result = subprocess.run(tool.command("version"), env=tool.environment(),
                                capture_output=True, text=True, check=False)
        found[tool.name] = (result.stdout.strip() or result.stderr.strip()).splitlines()[0]
    found["C compiler"] = _first_line(["cc", "--version"])
    return found


def _first_line(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError:
        return "unknown"
    return (result.stdout.strip() or "unknown").splitlines()[0]
