"""The real programs the compatibility tests run beside this project, each in its own virtual
environment under ``.peer/`` (git-ignored): genv 1.4.3 from PyPI, and a Jupyter server with
jupyterlab-genv 0.4.0 (its server extension and kernel provisioner) and ipykernel.

They are peers, never imported by the project. jupyterlab-genv is installed without its
dependencies: it asks for the ``genv`` distribution, which would bring genv 1.4.3 back; the
``genv`` it runs is this project's, found on PATH.

``.ci/run`` installs both beforehand (``python tests/compat/peers.py``); a test run on a fresh
clone installs them on first use.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / ".peer"
GENV_143 = ROOT / "genv-1.4.3"
JUPYTER = ROOT / "jupyter"

REQUIREMENTS = {
    GENV_143: (["genv==1.4.3"], []),
    JUPYTER: (["jupyter_server>=2,<3", "ipykernel>=6", "jupyter_client>=8"],
              ["jupyterlab-genv==0.4.0"]),
}
PROBES = {GENV_143: "genv", JUPYTER: "jupyter-server"}


def ready(venv: Path) -> bool:
    return (venv / "bin" / PROBES[venv]).exists() and (venv / ".complete").exists()


def ensure(venv: Path) -> Path:
    """The virtual environment ``venv``, made and filled when it is not there yet."""
    if ready(venv):
        return venv
    with_deps, without_deps = REQUIREMENTS[venv]
    ROOT.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]
    subprocess.run([*pip, *with_deps], check=True, timeout=900)
    if without_deps:
        subprocess.run([*pip, "--no-deps", *without_deps], check=True, timeout=900)
    (venv / ".complete").write_text("")
    return venv


def main() -> int:
    for venv in (GENV_143, JUPYTER):
        ensure(venv)
        print(f"peer ready: {venv.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
