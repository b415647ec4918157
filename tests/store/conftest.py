"""Running a bit of genv as a uid without a passwd entry, for the store's permission tests."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest


@pytest.fixture
def run_as_uid(user_runtime) -> Callable[[int, str], subprocess.CompletedProcess[str]]:  # noqa: ANN001
    """``run(uid, code)``: Python ``code`` as ``uid``, with genv importable; never raises."""

    def run(uid: int, code: str) -> subprocess.CompletedProcess[str]:
        def become() -> None:
            import os

            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

        return subprocess.run(
            [user_runtime.python, "-c", code],
            env={"PYTHONPATH": str(user_runtime.site), "PATH": "/usr/bin:/bin", "HOME": "/"},
            preexec_fn=become, cwd="/", capture_output=True, text=True, timeout=60,
            check=False,
        )

    return run
