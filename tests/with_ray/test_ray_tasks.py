"""Ray tasks of half a GPU each, in a real local Ray cluster on the simulated machine: they
share a device within their shares; one that takes more is terminated by ``genv enforce``
and Ray reports that task failed; the next task never runs in an earlier task's environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_helpers import ready_and_wait, require_ray, use_gpu_memory, wait_until, where_am_i

ray = require_ray()

import genv.ray  # noqa: E402  (needs Ray: after the skip)
from genv.ray.decorator import new_spec  # noqa: E402

pytestmark = pytest.mark.ray


@genv.ray.remote(num_gpus=0.5, max_retries=0)
def hold(folder: str, tag: str, go: str, amount: str) -> dict:
    use_gpu_memory(amount)
    return ready_and_wait(folder, tag, go)


@genv.ray.remote(num_gpus=0.5)
def whereabouts() -> dict:
    return where_am_i()


@ray.remote(num_cpus=1)
def plain() -> dict:
    return where_am_i()


def test_two_tasks_share_a_device_within_their_shares(machine, tmp_path):
    go = tmp_path / "go"
    refs = [hold.remote(str(tmp_path), tag, str(go), "30gi") for tag in ("a", "b")]
    a, b = (machine.wait_ready(tmp_path, tag) for tag in ("a", "b"))

    assert a["gpu_ids"] == b["gpu_ids"]  # Ray packed both halves on one device
    assert a["eid"] != b["eid"]
    for info in (a, b):
        assert info["eid"].startswith("ray/hold/")
        assert info["claim"] == info["eid"]  # what enforcement reads: the worker's own
        assert info["gpu_memory"] == "40gi"
        assert info["cuda"] == str(info["gpu_ids"][0])
        env, attachments = machine.environment(info["eid"])
        assert env.pids == (info["pid"],)
        assert env.config.name == "ray/hold"
        assert env.config.gpu_memory == "40gi"
        assert [x.device_index for x in attachments] == info["gpu_ids"]
    listed = json.loads(machine.genv("envs", "ps", "--format", "json").stdout)
    assert {(e["eid"], e["config"]["name"], tuple(e["pids"])) for e in listed} == {
        (a["eid"], "ray/hold", (a["pid"],)), (b["eid"], "ray/hold", (b["pid"],))}

    enforced = machine.genv("enforce", "--interval", "0", "--env-memory")
    assert enforced.returncode == 0, enforced.stderr
    assert enforced.stdout == ""  # 30gi each, within 40gi each: nothing to do

    go.touch()
    done = ray.get(refs, timeout=60)
    assert [d["pid"] for d in done] == [a["pid"], b["pid"]]
    wait_until(lambda: not machine.environments(), "both environments ended with their tasks")


def test_a_task_over_its_share_is_terminated_and_the_other_finishes(machine, tmp_path):
    go = tmp_path / "go"
    greedy_ref = hold.remote(str(tmp_path), "greedy", str(go), "50gi")
    modest_ref = hold.remote(str(tmp_path), "modest", str(go), "30gi")
    greedy = machine.wait_ready(tmp_path, "greedy")
    modest = machine.wait_ready(tmp_path, "modest")
    assert greedy["gpu_ids"] == modest["gpu_ids"]

    enforcer = machine.start_enforce("--interval", "0.5", "--env-memory", "--grace", "5")
    try:
        enforcer.wait_for(f"Terminating process {greedy['pid']}")
        with pytest.raises(ray.exceptions.RayError) as failed:
            ray.get(greedy_ref, timeout=60)
        go.touch()
        assert ray.get(modest_ref, timeout=60)["pid"] == modest["pid"]
        said = enforcer.output()
    finally:
        enforcer.stop()

    assert "died" in str(failed.value)  # Ray: the worker died while executing the task
    assert f"Environment {greedy['eid']} is using" in said
    assert "over its capacity of 40gi" in said
    assert modest["eid"] not in said and str(modest["pid"]) not in said
    wait_until(lambda: not machine.environments(), "both environments ended")


def test_the_next_task_never_runs_in_an_earlier_tasks_environment(machine):
    first = ray.get(whereabouts.remote(), timeout=60)
    assert first["claim"] == first["eid"]
    wait_until(lambda: machine.environment(first["eid"]) is None,
               "the first task's environment ended with the task")
    wait_until(lambda: not Path(f"/proc/{first['pid']}").exists(),
               "the first task's worker exited (it serves one call)")

    second = ray.get(whereabouts.remote(), timeout=60)
    assert second["eid"] != first["eid"]
    assert second["claim"] == second["eid"]
    assert second["pid"] != first["pid"]

    # Plain Ray tasks run in Ray's ordinary workers: in no environment at all.
    for info in ray.get([plain.remote() for _ in range(3)], timeout=60):
        assert info["claim"] is None
        assert info["eid"] is None
        assert info["pid"] not in (first["pid"], second["pid"])
    wait_until(lambda: not machine.environments(), "no environment is left")


def test_a_task_in_a_worker_without_its_claim_refuses_to_run(machine):
    # What a reused worker would be: os.environ could be changed, its initial environment,
    # which enforcement reads, not. Ray's own function, called without the runtime_env.
    spec = new_spec("stray", 0.5)
    with pytest.raises(ray.exceptions.RayTaskError, match="did not start with"):
        ray.get(whereabouts._remote.remote(spec), timeout=60)
    assert machine.environment(spec.eid) is None
    assert not machine.environments()


def test_arguments_are_checked_against_the_functions_own_signature(machine):
    with pytest.raises(TypeError):
        whereabouts.remote("unexpected")
    with pytest.raises(TypeError, match="cannot be called directly"):
        whereabouts()


def test_options_at_the_call_set_the_share_and_the_name(machine):
    info = ray.get(whereabouts.options(num_gpus=0.25, name="quarter").remote(), timeout=60)
    assert info["gpu_memory"] == "20gi"
    assert info["eid"].startswith("ray/quarter/")
    assert info["claim"] == info["eid"]
