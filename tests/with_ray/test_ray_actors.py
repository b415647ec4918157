"""Ray actors of half a GPU, in a real local Ray cluster on the simulated machine: an actor
keeps its environment (the same id, the same process) for its lifetime, while tasks come
and go, and loses it when it dies; one over its share is terminated by ``genv enforce``."""

from __future__ import annotations

import pytest

from ray_helpers import require_ray, use_gpu_memory, wait_until, where_am_i

ray = require_ray()

import genv.ray  # noqa: E402  (needs Ray: after the skip)

pytestmark = pytest.mark.ray


@genv.ray.remote(num_gpus=0.5, max_restarts=0)
class Holder:
    def __init__(self, label: str) -> None:
        self.label = label

    def info(self) -> dict:
        return {**where_am_i(), "label": self.label}

    def use(self, amount: str) -> dict:
        use_gpu_memory(amount)
        return self.info()


@genv.ray.remote(num_gpus=0.5)
def passing() -> str:
    return where_am_i()["eid"]


def test_an_actor_keeps_its_environment_for_its_lifetime(machine):
    actor = Holder.remote("first")
    before = ray.get(actor.info.remote(), timeout=60)
    assert before["label"] == "first"
    assert before["eid"].startswith("ray/Holder/")
    assert before["claim"] == before["eid"]
    env, attachments = machine.environment(before["eid"])
    assert env.pids == (before["pid"],)
    assert env.config.gpu_memory == "40gi"
    assert [a.device_index for a in attachments] == before["gpu_ids"]

    for _ in range(2):  # tasks come and go, each in an environment of its own
        eid = ray.get(passing.remote(), timeout=60)
        assert eid != before["eid"]
        wait_until(lambda eid=eid: machine.environment(eid) is None, "the task's env ended")

    after = ray.get(actor.use.remote("30gi"), timeout=60)
    assert (after["pid"], after["eid"], after["claim"]) == (
        before["pid"], before["eid"], before["eid"])
    assert machine.environment(before["eid"]) is not None
    enforced = machine.genv("enforce", "--interval", "0", "--env-memory")
    assert enforced.returncode == 0 and enforced.stdout == "", enforced

    ray.kill(actor)
    wait_until(lambda: machine.environment(before["eid"]) is None,
               "the actor's environment ended with its process")


def test_an_actor_over_its_share_is_terminated(machine):
    actor = Holder.remote("greedy")
    info = ray.get(actor.use.remote("50gi"), timeout=60)

    enforced = machine.genv("enforce", "--interval", "0", "--env-memory", "--grace", "5")

    assert enforced.returncode == 0, enforced.stderr
    assert f"Environment {info['eid']} is using" in enforced.stdout
    assert f"Terminating process {info['pid']}" in enforced.stdout
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.info.remote(), timeout=60)
    wait_until(lambda: machine.environment(info["eid"]) is None, "the actor's env ended")


def test_actor_arguments_are_checked_against_the_classs_own_signature(machine):
    with pytest.raises(TypeError):
        Holder.remote()
    with pytest.raises(TypeError, match="cannot be created directly"):
        Holder("x")
