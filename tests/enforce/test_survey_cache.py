"""The survey cache gives, change after change, exactly the plan of the whole survey.

Machines are drawn at random (environments of a few users and root, their attachments and
capacities, processes in them, outside them, posing as others', unknown, root's in users'
environments, exempt ones), then changed one step at a time the way the observer tells of
changes (same state; some entries removed, some added), under every rule configuration.
"""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from genv.domain.models import Attachment, Device, EnvConfig, Environment, RegisteredProcess
from genv.domain.observation import (
    Membership,
    Observation,
    ObservedProcess,
    ProcessFacts,
    Usage,
)
from genv.domain.values import replace
from genv.enforce.observe import Change
from genv.enforce.plan import combine
from genv.enforce.rules import RuleConfig, survey
from genv.enforce.survey_cache import SurveyCache

UIDS = (0, 1000, 1001, 1002)
NAMES = {0: "root", 1000: "alice", 1001: "bob", 1002: None}
DEVICES = tuple(Device(i, f"GPU-{i}", "Simulated GPU", 80 << 30, 0) for i in range(4))
MI = 1 << 20
CAPACITIES = (None, "100mi", "300mi", "1gi", "not a size")

CONFIGS = (
    RuleConfig(),
    RuleConfig(non_env_processes=True),
    RuleConfig(non_env_processes=True, exempt_uids=frozenset({1001})),
    RuleConfig(non_env_processes=True, exempt_programs=frozenset({"/usr/bin/xorg"})),
    RuleConfig(non_env_processes=True, max_devices_per_user=1, max_memory_per_user="250mi"),
    RuleConfig(max_devices_for_user={1000: 0}, max_memory_for_user={0: "50mi", 1001: "1gi"}),
    RuleConfig(env_devices=False, env_memory=False, max_devices_per_user=2,
               exempt_uids=frozenset({0})),
)


@st.composite
def environments(draw) -> tuple[tuple[Environment, ...], tuple[Attachment, ...]]:
    envs = []
    attachments = []
    for number in range(draw(st.integers(0, 6))):
        uid = draw(st.sampled_from(UIDS))
        eid = draw(st.sampled_from(("e1", "e2", "e3", f"x{number}")))
        env = Environment(eid, uid, NAMES[uid], float(number),
                          EnvConfig(gpu_memory=draw(st.sampled_from(CAPACITIES))),
                          (RegisteredProcess(50_000 + number, 1),))
        envs.append(env)
        for index in draw(st.sets(st.integers(0, 3), max_size=3)):
            attachments.append(Attachment(index, eid, uid, float(draw(st.integers(0, 9))),
                                          draw(st.sampled_from(CAPACITIES))))
    return tuple(envs), tuple(attachments)


@st.composite
def a_process(draw, pid: int, envs: tuple[Environment, ...]) -> ObservedProcess:
    uid = draw(st.sampled_from((*UIDS, None)))
    membership = draw(st.sampled_from(list(Membership)))
    env = draw(st.sampled_from(envs)) if envs and membership is Membership.IN_ENV else None
    if membership is Membership.IN_ENV and env is None:
        membership = Membership.NO_ENV
    if env is not None and uid not in (env.uid, 0):
        uid = draw(st.sampled_from((env.uid, 0)))
    facts = ProcessFacts(
        pid=pid,
        start=draw(st.integers(1, 50)),
        uid=uid,
        username=NAMES.get(uid) if uid is not None else None,
        name="python",
        claimed_eid=env.eid if env is not None else None,
        exe=draw(st.sampled_from(("/usr/bin/python3", "/usr/bin/xorg"))),
    )
    devices = draw(st.sets(st.integers(0, 3), min_size=1, max_size=3))
    usage = tuple(
        Usage(index, draw(st.sampled_from((None, 0, 50 * MI, 120 * MI, 400 * MI))))
        for index in sorted(devices)
    )
    note = "" if membership is Membership.IN_ENV else draw(st.sampled_from(("", "a note")))
    return ObservedProcess(facts, usage, membership, env, note)


@st.composite
def histories(draw):
    envs, attachments = draw(environments())
    pids = draw(st.lists(st.integers(100, 140), unique=True, max_size=12))
    processes = {pid: draw(a_process(pid, envs)) for pid in pids}
    steps = []
    for _ in range(draw(st.integers(1, 6))):
        removed = draw(st.lists(st.sampled_from(sorted(processes)), unique=True, max_size=3)) \
            if processes else []
        changed = {}
        for pid in draw(st.lists(st.integers(100, 140), unique=True, max_size=3)):
            changed[pid] = draw(a_process(pid, envs))
        steps.append((removed, changed))
    return envs, attachments, processes, steps


def observation(envs, attachments, processes) -> Observation:
    return Observation(DEVICES, tuple(processes[pid] for pid in sorted(processes)), envs,
                       attachments)


@settings(max_examples=300, deadline=None)
@given(histories(), st.sampled_from(CONFIGS))
def test_the_cached_plan_is_the_whole_surveys(history, config):
    envs, attachments, processes, steps = history
    cache = SurveyCache(config)
    previous = observation(envs, attachments, processes)
    cache.update(previous, None)
    assert cache.plan() == combine(survey(previous, config))
    for removed_pids, changed in steps:
        now = dict(processes)
        removed = [now.pop(pid) for pid in removed_pids if pid in now]
        added = []
        for pid, new in changed.items():
            if pid in now:
                removed.append(now[pid])
            now[pid] = new
            added.append(new)
        snapshot = observation(envs, attachments, now)
        cache.update(snapshot, Change(previous, tuple(removed), tuple(added)))
        expected = combine(survey(snapshot, config))
        plan = cache.plan()
        assert plan == expected
        event(f"findings: {min(len(plan.findings), 3)}, "
              f"detachments: {min(len(plan.detachments), 1)}")
        assert [p.pid for p in cache.unknown()] == [
            p.pid for p in snapshot.processes if p.membership is Membership.UNKNOWN
        ]
        processes, previous = now, snapshot


def test_an_unchanged_snapshot_gives_back_the_same_plan():
    env = Environment("e1", 1000, "alice", 1.0)
    stray = ObservedProcess(ProcessFacts(7, 1, 1000, "alice", "x", None), (Usage(0, MI),),
                            Membership.NO_ENV)
    snapshot = Observation(DEVICES, (stray,), (env,), ())
    cache = SurveyCache(RuleConfig(non_env_processes=True))
    cache.update(snapshot, None)
    first = cache.plan()
    assert len(first.terminations) == 1
    again = replace(snapshot)  # another object, the very same entries
    cache.update(again, Change(snapshot, (), ()))
    assert cache.plan() is first


def test_a_snapshot_out_of_pid_order_is_surveyed_whole():
    """Hand-made snapshots may list processes in any order: the plan keeps that order."""
    a = ObservedProcess(ProcessFacts(9, 1, 1000, "alice", "x", None), (Usage(0, MI),),
                        Membership.NO_ENV)
    b = replace(a, facts=replace(a.facts, pid=3))
    snapshot = Observation(DEVICES, (a, b), (), ())
    config = RuleConfig(non_env_processes=True)
    cache = SurveyCache(config)
    cache.update(snapshot, None)
    assert cache.plan() == combine(survey(snapshot, config))
    assert [t.process.pid for t in cache.plan().terminations] == [9, 3]
