"""The worker's side: a Ray task or actor entering its own environment, and leaving it.

The environment id reaches the worker twice: in ``GENV_ENVIRONMENT_ID`` of the worker's
initial environment (Ray started the worker with it, through the task's ``runtime_env``), and
as the ``TaskSpec`` argument of the call. Enforcement reads the first one, from
/proc/PID/environ, which no code can change once the process runs; so before anything is
registered the worker checks that both agree, and refuses to run the task otherwise (its GPU
use could not be told apart from anyone else's).
"""

from __future__ import annotations

import atexit
import inspect
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import ray

from genv.backends import GpuBackend, open_backend
from genv.core import devices, environments, session
from genv.domain import validate
from genv.domain.memory import MULTIPLIERS
from genv.domain.models import Device
from genv.errors import GenvError
from genv.store import Store
from genv.system import processes


class TaskEnvironmentError(GenvError):
    """A Ray task cannot run in its environment; the message says why, in one line."""


@dataclass(frozen=True)
class TaskSpec:
    """What the caller decided for one task or actor: its environment and its GPU share."""

    eid: str
    name: str
    num_gpus: float


# -- pure parts: which devices, how much memory ---------------------------------------------


def device_indices(gpu_ids: Sequence[int | str], devices_now: Sequence[Device]) -> list[int]:
    """genv's device indices for the GPU ids Ray gave the task (indices or UUIDs)."""
    by_uuid = {device.uuid: device.index for device in devices_now}
    known = {device.index for device in devices_now}
    indices = set()
    for gpu_id in gpu_ids:
        text = str(gpu_id).strip()
        index = int(text) if validate.decimal(text) else by_uuid.get(text)
        if index is None or index not in known:
            raise TaskEnvironmentError(
                f"Ray gave this task GPU {text!r}, which is not one of the {len(known)} "
                "devices genv sees on this machine; start Ray with the GPUs genv reports "
                "(genv devices)"
            )
        indices.add(index)
    return sorted(indices)


def memory_share(total: int, num_gpus: float) -> str | None:
    """The GPU memory a fraction of a device stands for (``num_gpus`` × ``total``, rounded
    down), as genv writes amounts; None for a whole device or more (no capacity).

    The fraction is taken as written (``0.1`` is a tenth, not the nearest float).
    """
    if not 0 < num_gpus < 1:
        return None
    amount = math.floor(total * Fraction(str(num_gpus)))
    for unit in ("gi", "mi", "ki"):
        if amount and amount % MULTIPLIERS[unit] == 0:
            return f"{amount // MULTIPLIERS[unit]}{unit}"
    return str(amount)


# -- entering and leaving ---------------------------------------------------------------------


class TaskEnvironment:
    """The environment of one task (or actor) in the worker process that runs it."""

    def __init__(self, spec: TaskSpec, backend: GpuBackend | None = None) -> None:
        self.spec = spec
        self.pid = os.getpid()
        self._backend = backend
        self._saved: dict[str, str | None] | None = None
        self._lock = threading.Lock()

    def _check_claim(self) -> None:
        claim = processes.environment_claim(self.pid)
        claimed = claim[0] if claim is not None else None
        inherited = session.current_eid()
        if claimed != self.spec.eid or inherited != self.spec.eid:
            raise TaskEnvironmentError(
                f"this Ray worker (pid {self.pid}) did not start with "
                f"{session.ENVIRONMENT_ID}={self.spec.eid} (it has {claimed or 'none'}), so "
                "genv enforce could not tell its GPU use apart; call the task through "
                "genv.ray.remote, and do not override its runtime_env env_vars"
            )

    def enter(self) -> list[int]:
        """Register this process in the environment, attach Ray's devices, set the
        variables; the indices attached."""
        self._check_claim()
        backend = self._backend or open_backend()
        devices_now = list(backend.snapshot(processes=False).devices)
        indices = device_indices(ray.get_gpu_ids(), devices_now)
        changes: dict[str, object] = {
            "name": session.check_value("name", self.spec.name),
            "gpus": math.ceil(self.spec.num_gpus),
        }
        by_index = {device.index: device for device in devices_now}
        if indices:
            share = memory_share(by_index[indices[0]].total_memory, self.spec.num_gpus)
            if share is not None:
                changes["gpu_memory"] = share
        with Store() as store:
            view = environments.enter(store, self.spec.eid, self.pid, changes, attach=False)
            try:
                # Ray has already decided who shares a device: genv follows its decision.
                for index in indices:
                    devices.attach(
                        store, self.spec.eid, index=index, over_subscribe=True, backend=backend
                    )
            except BaseException:
                environments.unregister(store, pid=self.pid)
                raise
        variables = session.variables(self.spec.eid, indices, view.env.config)
        self._saved = {name: os.environ.get(name) for name in variables}
        session.apply(variables)
        return indices

    def leave(self) -> None:
        """Unregister this process, which ends the environment; put the variables back.
        Safe to call twice (an actor leaves at exit, and on a failed start)."""
        with self._lock:
            saved, self._saved = self._saved, None
        if saved is None:
            return
        session.apply(saved)
        with Store() as store:
            environments.unregister(store, pid=self.pid)


# -- what runs in the worker ----------------------------------------------------------------

_SPEC_PARAMETER = inspect.Parameter("genv_task", inspect.Parameter.POSITIONAL_ONLY)


def _with_spec(signature: inspect.Signature, skip_self: bool) -> inspect.Signature:
    """``signature`` with the TaskSpec parameter first (after ``self``), so that Ray still
    checks the caller's arguments against the user's own signature."""
    parameters = list(signature.parameters.values())
    head = parameters[:1] if skip_self else []
    rest = parameters[1:] if skip_self else parameters
    first = [p.replace(kind=inspect.Parameter.POSITIONAL_ONLY) for p in head]
    return signature.replace(parameters=[*first, _SPEC_PARAMETER, *rest])


def _signature(target: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):  # builtins and some C callables have none
        return None


def task_body(function: Callable[..., Any]) -> Callable[..., Any]:
    """The function Ray runs for each call: ``function`` inside the call's environment."""

    def body(spec: TaskSpec, /, *args: Any, **kwargs: Any) -> Any:
        environment = TaskEnvironment(spec)
        environment.enter()
        try:
            return function(*args, **kwargs)
        finally:
            environment.leave()

    for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
        if hasattr(function, attribute):
            setattr(body, attribute, getattr(function, attribute))
    signature = _signature(function)
    if signature is not None:
        body.__signature__ = _with_spec(signature, skip_self=False)  # type: ignore[attr-defined]
    return body


def actor_class(cls: type) -> type:
    """A subclass of ``cls`` whose instances live in their own environment, from the start
    of ``__init__`` to the end of the actor's process."""
    original: Any = cls.__init__  # type: ignore[misc]

    def __init__(self: Any, spec: TaskSpec, /, *args: Any, **kwargs: Any) -> None:
        environment = TaskEnvironment(spec)
        environment.enter()
        atexit.register(environment.leave)
        try:
            original(self, *args, **kwargs)
        except BaseException:
            environment.leave()
            raise

    signature = _signature(original)
    if signature is not None and original is not object.__init__:
        __init__.__signature__ = _with_spec(signature, skip_self=True)  # type: ignore[attr-defined]
    namespace = {
        "__init__": __init__,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
    }
    return type(cls.__name__, (cls,), namespace)
