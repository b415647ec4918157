"""genv.ray without a cluster: the options it needs, the ids and shares it derives, and the
check that a worker carries its environment in its initial environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ray_helpers import require_ray

require_ray()

import genv.ray  # noqa: E402  (needs Ray: after the skip)
from genv.domain import validate  # noqa: E402
from genv.domain.models import Device  # noqa: E402
from genv.errors import UsageError  # noqa: E402
from genv.ray.decorator import new_spec, runtime_env_with, task_name  # noqa: E402
from genv.ray.task_environment import (  # noqa: E402
    TaskEnvironment,
    TaskEnvironmentError,
    TaskSpec,
    device_indices,
    memory_share,
)

GI = 1024**3


@pytest.mark.parametrize("options", [{}, {"num_gpus": None}, {"num_cpus": 1}])
def test_num_gpus_is_required(options):
    with pytest.raises(genv.ray.RayOptionsError, match="needs num_gpus") as error:
        genv.ray.remote(**options)
    assert isinstance(error.value, ValueError)  # as in genv 1.4.3
    assert isinstance(error.value, UsageError)  # one line, exit 2, from the command line
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("value", [-1, "1", True, float("nan")])
def test_num_gpus_must_be_a_number_of_zero_or_more(value):
    with pytest.raises(genv.ray.RayOptionsError, match="num_gpus must be a number"):
        genv.ray.remote(num_gpus=value)


def test_options_keep_num_gpus_required():
    @genv.ray.remote(num_gpus=0.5)
    def task() -> None:
        pass

    assert isinstance(task.options(num_gpus=0.25), genv.ray.RemoteFunction)
    with pytest.raises(genv.ray.RayOptionsError):
        task.options(num_gpus=None)


def test_functions_and_classes_are_decorated_async_functions_refused():
    async def coroutine() -> None:
        pass

    class Actor:
        pass

    assert isinstance(genv.ray.remote(num_gpus=1)(lambda: None), genv.ray.RemoteFunction)
    assert isinstance(genv.ray.remote(num_gpus=1)(Actor), genv.ray.ActorClass)
    with pytest.raises(genv.ray.RayOptionsError):
        genv.ray.remote(num_gpus=1)(coroutine)


def test_each_call_gets_an_environment_id_named_after_the_task():
    specs = [new_spec("train_model", 0.5) for _ in range(100)]
    assert len({spec.eid for spec in specs}) == 100
    for spec in specs:
        assert validate.environment_id(spec.eid) == spec.eid
        prefix, name, token = spec.eid.split("/")
        assert (prefix, name, len(token)) == ("ray", "train_model", 12)
        assert spec.name == "ray/train_model"
        assert spec.num_gpus == 0.5


@pytest.mark.parametrize(
    ("name", "part"),
    [("f", "f"), ("my task/with, odd\nchars", "my_task_with_odd_chars"), ("///", "task"),
     ("x" * 500, "x" * 64), ("naïve", "na_ve")],
)
def test_task_names_become_valid_id_parts(name, part):
    assert task_name(name) == part
    spec = new_spec(name, 1)
    assert validate.environment_id(spec.eid) == spec.eid
    assert validate.environment_name(spec.name) == spec.name


@pytest.mark.parametrize(
    ("total", "num_gpus", "share"),
    [(80 * GI, 0.5, "40gi"), (16 * GI, 0.25, "4gi"), (80 * GI, 0.1, "8gi"),
     (GI, 0.75, "768mi"), (80 * GI, 0.3, "24gi"), (80 * GI, 1 / 3, "28633115306"),
     (80 * GI, 1, None), (80 * GI, 2, None), (80 * GI, 0, None)],
)
def test_a_fraction_below_one_is_that_share_of_the_memory(total, num_gpus, share):
    assert memory_share(total, num_gpus) == share
    if share is not None:
        assert validate.memory_amount(share) == share


def _device(index: int) -> Device:
    return Device(index, f"GPU-{index}", "Simulated", 80 * GI)


def test_rays_gpu_ids_become_device_indices():
    devices = [_device(0), _device(1), _device(2)]
    assert device_indices([2, 0], devices) == [0, 2]
    assert device_indices(["1"], devices) == [1]
    assert device_indices(["GPU-2"], devices) == [2]
    assert device_indices([], devices) == []
    for unknown in ([3], ["GPU-9"], ["MIG-1"]):
        with pytest.raises(TaskEnvironmentError, match="not one of the 3 devices"):
            device_indices(unknown, devices)


def test_the_callers_runtime_env_is_kept_and_the_id_added():
    given = {"env_vars": {"A": "1", "GENV_ENVIRONMENT_ID": "someone-else"}, "pip": ["x"]}
    merged = runtime_env_with(given, "ray/f/abc")
    assert merged == {"env_vars": {"A": "1", "GENV_ENVIRONMENT_ID": "ray/f/abc"}, "pip": ["x"]}
    assert given["env_vars"]["GENV_ENVIRONMENT_ID"] == "someone-else"  # not changed
    assert runtime_env_with(None, "e") == {"env_vars": {"GENV_ENVIRONMENT_ID": "e"}}


def test_a_process_whose_initial_environment_claims_another_refuses(monkeypatch):
    # A reused worker: os.environ says the new id, /proc/PID/environ (what enforcement
    # reads) still the old one, or none.
    spec = TaskSpec("ray/task/0123456789ab", "ray/task", 0.5)
    monkeypatch.setenv("GENV_ENVIRONMENT_ID", spec.eid)
    with pytest.raises(TaskEnvironmentError, match="did not start with GENV_ENVIRONMENT_ID"):
        TaskEnvironment(spec).enter()


def test_a_process_started_with_its_claim_passes_the_check():
    code = ("from genv.ray.task_environment import TaskEnvironment, TaskSpec\n"
            "TaskEnvironment(TaskSpec('ray/task/0123456789ab', 'ray/task', 0.5))._check_claim()")
    env = {**os.environ, "GENV_ENVIRONMENT_ID": "ray/task/0123456789ab"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
