"""Fixtures of the metrics tests: ``prometheus``, a real Prometheus (promkit.Prometheus),
stopped and removed after the test. Skipped where ``prometheus`` is not installed, failed
in CI (``.ci/run`` installs it)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from promkit import Prometheus


@pytest.fixture
def prometheus() -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):  # .ci/run installs it: missing there is a failure
            pytest.fail("prometheus is not installed, though .ci/run installs it")
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    folder = Path(tempfile.mkdtemp(prefix="genvprom-"))
    server = Prometheus(binary, folder)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
