"""Environments: finding one, registering processes and kernels, configuring, ending.

Every front end (the low-level ``genv envs`` commands, the shell commands, the Python API,
remote hosts) calls these; none opens a store transaction itself. Ids are unique per owner,
so an id names the caller's own environment first; root, which has none of most ids, gets
the only environment with that id, and an error when several users have one.
"""

from __future__ import annotations

from collections.abc import Mapping

from genv.domain import validate
from genv.domain.models import Environment
from genv.domain.state import State
from genv.domain.values import value
from genv.store import NotFound, PermissionRefused, StateError, Store
from genv.system import users


@value
class EnvironmentView:
    """An environment with the indices of the devices attached to it."""

    env: Environment
    indices: list[int]


def lookup(state: State, eid: str, caller_uid: int) -> Environment:
    """The environment ``eid`` as the caller means it; NotFound when there is none."""
    matches = state.with_eid(eid)
    for env in matches:
        if env.uid == caller_uid:
            return env
    if len(matches) == 1:
        return matches[0]
    if matches:
        owners = ", ".join(sorted(users.username(e.uid) or f"uid {e.uid}" for e in matches))
        raise NotFound(
            f"environment {eid} exists for several users ({owners}); run the command as "
            "its owner (sudo -u USER genv ...)"
        )
    problem = state.problem_of(caller_uid)
    if problem is not None:  # the caller's own records are unknown: say why
        raise StateError(f"environment {eid} cannot be found: {problem.line()}")
    raise NotFound(f"environment {eid} does not exist")


def find(store: Store, eid: str) -> EnvironmentView:
    """The environment ``eid`` and its attached indices, read without any lock."""
    state = store.read()
    env = lookup(state, eid, store.caller_uid)
    return EnvironmentView(env, state.attached_indices(env))


def find_registered(
    state: State, pid: int | None = None, kernel_id: str | None = None
) -> list[Environment]:
    """The environments a process or a kernel is registered in."""
    if pid is not None:
        return state.find_by_pid(pid)
    return state.find_by_kernel(kernel_id or "")


def register(
    store: Store,
    eid: str,
    uid: int,
    pid: int | None = None,
    kernel_id: str | None = None,
    username: str | None = None,
) -> Environment:
    """Register a process or a kernel in environment ``eid`` of ``uid``, creating it."""
    eid = validate.environment_id(eid)
    uid = validate.uid(uid)
    with store.transaction(uid=uid) as tx:
        return tx.activate(eid, pid=pid, kernel_id=kernel_id, username=username)


def unregister(store: Store, pid: int | None = None, kernel_id: str | None = None) -> list[str]:
    """Unregister a process or a kernel from the caller's environments (everyone's, as root)."""
    state = store.read()
    owners = {env.uid for env in find_registered(state, pid, kernel_id)}
    if store.caller_uid != 0:
        if owners and store.caller_uid not in owners:
            owner = min(owners)
            name = users.username(owner) or f"uid {owner}"
            raise PermissionRefused(
                f"permission denied: {'process ' + str(pid) if pid is not None else 'kernel'} "
                f"is registered in an environment of {name}; only its owner or root may "
                "unregister it"
            )
        owners &= {store.caller_uid}
    left: list[str] = []
    for uid in sorted(owners or {store.caller_uid}):
        with store.transaction(uid=uid) as tx:
            left += tx.deactivate(pid=pid, kernel_id=kernel_id)
    problem = state.problem_of(store.caller_uid)
    if not left and problem is not None:  # it may be registered where we cannot see
        raise StateError(f"nothing was changed: {problem.line()}")
    return left


def configure(store: Store, eid: str, **changes: object) -> Environment:
    """Set (a value) or clear (None) fields of ``eid``'s configuration: name, gpus, gpu_memory.

    Only its owner or root may; the values are checked (genv.domain.validate).
    """
    from genv.store.transaction import UNCHANGED

    env = lookup(store.read(), eid, store.caller_uid)
    fields = {key: changes.get(key, UNCHANGED) for key in ("name", "gpus", "gpu_memory")}
    with store.transaction(uid=env.uid) as tx:
        return tx.configure(env.eid, **fields)


def reset(store: Store) -> None:
    """End every environment the caller may change: their own, or everyone's as root.

    Root takes other users' environments back by revoking them in its own file, so that no
    user's lock can hold it up.
    """
    state = store.read()
    others = [env for env in state.environments if env.uid != store.caller_uid]
    with store.transaction() as tx:
        for env in [e for e in state.environments if e.uid == store.caller_uid]:
            if tx.has(env.eid):
                tx.end(env.eid)
        if store.caller_uid == 0 and others:
            tx.revoke(environments=others)


def enter(
    store: Store,
    eid: str,
    pid: int,
    changes: Mapping[str, object],
    project: Mapping[str, object] | None = None,
    attach: bool = True,
    over_subscribe: bool = False,
    backend_name: str | None = None,
) -> EnvironmentView:
    """Activation, for a shell or a program: register ``pid`` in the caller's ``eid``
    (creating it), configure it, and attach what it asks for.

    A new environment starts from the project's saved configuration; one being joined keeps
    its own. ``changes`` (what the user typed) apply on top in both cases. Devices are
    attached only when a device count was applied here, so joining an environment never
    changes its devices. When attaching fails, ``pid`` is unregistered again, so a failed
    activation leaves nothing behind.
    """
    eid = validate.environment_id(eid)
    with store.transaction() as tx:
        existed = tx.has(eid)
        # Named like genv 1.4.3 names them (its activation gave the user's name); an
        # integration's `genv envs activate --uid` alone gives none, as in 1.4.3.
        tx.activate(eid, pid=pid, username=users.username(store.caller_uid))
        settings = dict(project) if project and not existed else {}
        settings.update(changes)
        env = tx.configure(eid, **settings) if settings else tx.environment(eid)
        indices = tx.attached(eid)
    if attach and settings.get("gpus") is not None:
        from genv.core import devices

        try:
            indices = devices.attach(
                store, eid, over_subscribe=over_subscribe, backend_name=backend_name
            )
        except BaseException:
            with store.transaction() as tx:
                tx.deactivate(pid=pid)
            raise
    return EnvironmentView(env, indices)
