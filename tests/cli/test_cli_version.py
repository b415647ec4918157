"""``genv version``."""

from __future__ import annotations

import genv


def test_version_prints_the_package_version(run_genv) -> None:
    result = run_genv("version")
    assert (result.rc, result.out, result.err) == (0, f"{genv.__version__}\n", "")


def test_version_needs_no_gpu_and_no_state(run_genv, shared_tmp) -> None:
    result = run_genv("version", env={"GENV_GPU_BACKEND": "nvml",
                                       "GENV_TMPDIR": str(shared_tmp / "none")})
    assert result.rc == 0
    assert not (shared_tmp / "none").exists()
