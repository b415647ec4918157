"""The caller's side: ``genv.ray.remote(**options)`` and what it returns.

Each call (``f.remote(...)``, ``Actor.remote(...)``) chooses a new environment id and hands it
to Ray as ``GENV_ENVIRONMENT_ID`` in the call's ``runtime_env``: Ray then starts a worker
process with that variable in its initial environment, which is where enforcement reads it,
and since Ray gives a worker only to calls of the same runtime_env, no other task ever runs
in that process. Tasks always get ``max_calls=1`` (Ray's own default for GPU tasks): a worker
that no other call may use would only sit idle, claiming an environment that has ended, so it
exits when its task does.
"""

from __future__ import annotations

import inspect
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import ray

from genv.domain import validate
from genv.domain.constants import ENVIRONMENT_VARIABLE
from genv.errors import UsageError
from genv.ray import task_environment
from genv.ray.task_environment import TaskSpec

PREFIX = "ray"
MAX_TASK_NAME = 64
_NOT_IN_ID = re.compile(r"[^A-Za-z0-9._:@+=-]+")


class RayOptionsError(UsageError, ValueError):
    """``genv.ray.remote`` was used in a way it cannot serve (a ValueError, as in 1.4.3)."""


def task_name(text: str) -> str:
    """A task's or actor's name as a part of an environment id: the characters ids may hold
    (``/`` separates the parts, so it is not one of them), at most 64."""
    cleaned = _NOT_IN_ID.sub("_", text).strip("_")[:MAX_TASK_NAME]
    return cleaned or "task"


def new_spec(name: str, num_gpus: object) -> TaskSpec:
    """A fresh environment for one call of ``name``: id ``ray/<name>/<12 hex digits>``."""
    gpus = _num_gpus(num_gpus)
    part = task_name(name)
    eid = validate.environment_id(f"{PREFIX}/{part}/{secrets.token_hex(6)}")
    return TaskSpec(eid=eid, name=f"{PREFIX}/{part}", num_gpus=gpus)


def _num_gpus(value: object) -> float:
    if value is None:
        raise RayOptionsError(
            "genv.ray.remote needs num_gpus (e.g. num_gpus=0.5): each task gets the devices "
            "and the share of GPU memory it asks for; use ray.remote for tasks without GPUs"
        )
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise RayOptionsError(f"num_gpus must be a number of 0 or more, not {value!r}")
    return float(value)


def runtime_env_with(runtime_env: Mapping[str, Any] | None, eid: str) -> dict[str, Any]:
    """The caller's ``runtime_env`` with ``GENV_ENVIRONMENT_ID`` added to its ``env_vars``."""
    merged = dict(runtime_env or {})
    variables = dict(merged.get("env_vars") or {})
    variables[ENVIRONMENT_VARIABLE] = eid
    merged["env_vars"] = variables
    return merged


class _Remote:
    """What the two kinds share: default options, per-call overrides, one spec per call."""

    def __init__(
        self,
        target: Any,
        options: Mapping[str, Any],
        remote: Any,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self._target = target
        self._options = dict(options)
        self._remote = remote
        self._overrides = dict(overrides or {})

    def options(self, **overrides: Any) -> Any:
        """The same function or actor class with Ray options changed for the calls made
        through the result (as Ray's ``.options``); ``num_gpus`` stays required."""
        merged = {**self._overrides, **overrides}
        _num_gpus({**self._options, **merged}.get("num_gpus"))
        return type(self)(self._target, self._options, self._remote, merged)

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        settings = {**self._options, **self._overrides}
        spec = new_spec(settings.get("name") or self._target.__name__, settings.get("num_gpus"))
        call = dict(self._overrides)
        call["runtime_env"] = runtime_env_with(settings.get("runtime_env"), spec.eid)
        return self._remote.options(**call).remote(spec, *args, **kwargs)


class RemoteFunction(_Remote):
    """A Ray remote function each of whose calls runs in its own genv environment."""

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Start the task (in a new environment); Ray's ObjectRef(s) of its result."""
        return self._call(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self._target.__name__
        raise TypeError(f"a remote function cannot be called directly: use {name}.remote()")


class ActorClass(_Remote):
    """A Ray actor class each of whose actors lives in its own genv environment."""

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Create the actor (in a new environment, for its lifetime); Ray's ActorHandle."""
        return self._call(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self._target.__name__
        raise TypeError(f"an actor cannot be created directly: use {name}.remote()")


def remote(**options: Any) -> Callable[[Any], RemoteFunction | ActorClass]:
    """``@genv.ray.remote(num_gpus=..., **ray_options)``: ``ray.remote`` with every task or
    actor in its own environment, attached to the devices Ray gave it, with a GPU memory
    capacity of ``num_gpus`` × the device's memory when ``num_gpus`` is below one.

    ``num_gpus`` is required (RayOptionsError, a ValueError, otherwise).
    """
    _num_gpus(options.get("num_gpus"))

    def decorator(target: Any) -> RemoteFunction | ActorClass:
        if inspect.isclass(target):
            actor: Any = ray.remote(**options)(task_environment.actor_class(target))
            return ActorClass(target, options, actor)
        if inspect.iscoroutinefunction(target) or not callable(target):
            raise RayOptionsError(
                "genv.ray.remote decorates a function or a class (not an async function: "
                "Ray runs those only as actor methods)"
            )
        ray_options = {**options, "max_calls": 1}  # see the module's docstring
        function = ray.remote(**ray_options)(task_environment.task_body(target))
        return RemoteFunction(target, options, function)

    return decorator
