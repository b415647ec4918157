"""Ray tasks and actors as genv environments: a fractional GPU that is held to its share.

    import genv.ray

    @genv.ray.remote(num_gpus=0.25)
    def train(config): ...

Each task (each call) and each actor runs in its own environment, ``ray/<name>/<id>``,
attached to the devices Ray gave it; below one GPU it gets a GPU memory capacity of
``num_gpus`` × the device's memory, which ``genv enforce`` holds it to. The environment ends
with the task, or with the actor's process.

Why a worker of its own: enforcement ties a GPU process to an environment by the
``GENV_ENVIRONMENT_ID`` in its *initial* environment (/proc/PID/environ), which cannot change
once the process runs, so a reused Ray worker would go on claiming its first task's
environment whatever ``os.environ`` says. The caller therefore passes the id in the call's
``runtime_env`` ``env_vars``: Ray starts a new worker with it and hands that worker to no other
call (workers are matched by runtime_env). The task body runs in the worker itself, so Ray's
own API (``ray.get``, nested tasks, ``ray.get_gpu_ids()``) works in it as usual. The cost is a
worker start per task (see README).

This package needs Ray (``pip install 'genv-enforce[ray]'``); ``import genv`` does not.
"""

try:
    import ray  # noqa: F401
except ImportError as error:
    raise ImportError(
        f"genv.ray needs Ray ({error}): pip install 'genv-enforce[ray]'", name="ray"
    ) from None

from genv.ray.decorator import ActorClass, RayOptionsError, RemoteFunction, remote
from genv.ray.task_environment import TaskEnvironmentError

__all__ = ["ActorClass", "RayOptionsError", "RemoteFunction", "TaskEnvironmentError", "remote"]
