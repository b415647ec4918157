"""Which recorded environments are alive: a pure function of the records and two questions.

An environment lives while one of its registered processes or Jupyter kernels runs *as its
owner* (or as root, e.g. in a container started from it): a pid of someone else's process
keeps nothing alive, so nobody can hold another user's environment (and its devices) open.
Revocations in root's records take attachments and environments back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

from genv.domain.models import Attachment, Environment, RegisteredProcess, UserRecords
from genv.domain.state import State, StateProblem
from genv.domain.values import replace

# (process, owner uid) -> whether that very process runs, as that owner or root
ProcessAlive = Callable[[RegisteredProcess, int], bool]
# (owner uid, kernel ids) -> those of the ids whose kernel runs as that owner or root
KernelsAlive = Callable[[int, frozenset[str]], set[str]]


def live_state(
    per_user: Mapping[int, UserRecords],
    problems: Iterable[StateProblem],
    alive: ProcessAlive,
    kernels_alive: KernelsAlive,
) -> State:
    root = per_user.get(0)
    revoked_envs = set()
    revoked_attachments = set()
    for revocation in root.revocations if root is not None else ():
        if revocation.device is None:
            revoked_envs.add((revocation.uid, revocation.eid, revocation.time))
        else:
            revoked_attachments.add(
                (revocation.uid, revocation.eid, revocation.device, revocation.time)
            )
    wanted: dict[int, set[str]] = defaultdict(set)
    for records in per_user.values():
        for env in records.environments:
            wanted[env.uid].update(env.kernel_ids)
    running = {
        uid: kernels_alive(uid, frozenset(kernels)) for uid, kernels in wanted.items() if kernels
    }
    environments: list[Environment] = []
    for records in per_user.values():
        for env in records.environments:
            if (env.uid, env.eid, env.creation) in revoked_envs:
                continue
            processes = tuple(p for p in env.processes if alive(p, env.uid))
            kernels = tuple(k for k in env.kernel_ids if k in running.get(env.uid, ()))
            if processes or kernels:
                if processes != env.processes or kernels != env.kernel_ids:
                    env = replace(env, processes=processes, kernel_ids=kernels)
                environments.append(env)
    live = {env.key for env in environments}
    attachments: list[Attachment] = [
        a
        for records in per_user.values()
        for a in records.attachments
        if a.env_key in live and (a.uid, a.eid, a.device_index, a.time) not in revoked_attachments
    ]
    return State(
        environments=tuple(environments),
        attachments=tuple(attachments),
        problems=tuple(problems),
        holdings=root.holdings if root is not None else (),
        holdings_published=root.holdings_published if root is not None else False,
    )
