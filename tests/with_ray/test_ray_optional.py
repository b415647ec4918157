"""Ray is optional: importing genv, its command line and its Python API never needs it, and
genv.ray without Ray says how to get it."""

from __future__ import annotations

import subprocess
import sys

BLOCK_RAY = "import sys; sys.modules['ray'] = None\n"  # any import of ray now fails


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)


def test_genv_imports_without_ray():
    done = _python(BLOCK_RAY + "import genv, genv.sdk, genv.cli.main, genv.enforce.daemon\n"
                   "genv.cli.main.build_parser('enforce')\n"
                   "assert 'ray' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]")
    assert done.returncode == 0, done.stderr


def test_genv_ray_without_ray_says_what_to_install():
    done = _python(BLOCK_RAY + "import genv.ray")
    assert done.returncode == 1
    assert "pip install 'genv-enforce[ray]'" in done.stderr.strip().splitlines()[-1]
