"""A real local Ray cluster on the simulated machine, one per test module.

- ``ray_machine`` (module-scoped): a folder with the machine file (2 devices of 80gi) and a
  state folder, the GENV_* variables pointing at them, and ``ray.init(num_gpus=2)``: Ray hands
  out GPU ids without seeing any hardware, and its workers inherit the variables. Starting
  Ray costs seconds on two cores, hence one cluster for all the tests of a module.
- ``machine`` (per test): the same machine with no GPU process and no environment left.

Without Ray installed the tests are skipped, unless ``GENV_REQUIRE_RAY=1`` (CI sets it), when
they fail instead: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ray_helpers import RayMachine, require_ray, wait_until

DEVICES = ("80gi", "80gi")
VARIABLES = ("GENV_GPU_BACKEND", "GENV_FAKE_MACHINE", "GENV_TMPDIR", "GENV_ENVIRONMENT_ID",
             "GENV_BYPASS", "PYTHONPATH")
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ray_machine() -> Iterator[RayMachine]:
    ray = require_ray()
    root = Path(tempfile.mkdtemp(prefix="genvray-", dir="/tmp"))
    root.chmod(0o1777)
    machine = RayMachine(root, DEVICES)
    machine.state_dir.mkdir(mode=0o1777)
    machine.state_dir.chmod(0o1777)  # the admin's install step (docs/security.md)
    machine.reset()
    saved = {name: os.environ.get(name) for name in VARIABLES}
    for name in VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(GENV_GPU_BACKEND="fake", GENV_FAKE_MACHINE=str(machine.path),
                      GENV_TMPDIR=str(machine.state_dir))
    # Ray's workers inherit the variables; PYTHONPATH lets them import ray_helpers.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), saved["PYTHONPATH"]]))
    try:
        ray.init(address="local", num_cpus=4, num_gpus=len(DEVICES), include_dashboard=False,
                 log_to_driver=False, _temp_dir=str(root / "ray"))
        try:
            yield machine
        finally:
            ray.shutdown()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def machine(ray_machine: RayMachine) -> RayMachine:
    """The module's machine, as a test should find it: no GPU process, no environment."""
    ray_machine.reset()
    wait_until(lambda: not ray_machine.environments(), "environments of an earlier test ended")
    return ray_machine
