"""The cluster planner alone (genv.enforce.cluster): hand-made observations, no SSH."""

from __future__ import annotations

from genv.domain.models import Attachment, Device, Environment
from genv.domain.observation import Membership, Observation, ObservedProcess, ProcessFacts, Usage
from genv.enforce.cluster import ClusterRules, HostView, plan_cluster


def _host(name, user, uid, devices, running=(), boot_time=0.0, memory=2**30, start=1000,
          attach_time=0.0):
    """A host where ``user`` (uid ``uid`` there) has environment e1 on ``devices``, and a
    process on each device of ``running``."""
    env = Environment("e1", uid, user, 1.0)
    processes = tuple(
        ObservedProcess(
            ProcessFacts(100 + i, start + i, uid, user, "python", "e1"),
            (Usage(index, memory),), Membership.IN_ENV, env,
        )
        for i, index in enumerate(running)
    )
    observation = Observation(
        devices=tuple(Device(i, f"GPU-{name}-{i}", "H100", 80 * 2**30) for i in range(4)),
        processes=processes,
        environments=(env,),
        attachments=tuple(Attachment(i, "e1", uid, attach_time + i) for i in devices),
    )
    return HostView(name, observation, boot_time, 100)


def test_a_user_is_one_user_by_name_whatever_the_uid():
    views = [_host("a", "bob", 1001, [0], running=[0]), _host("b", "bob", 2002, [1],
             running=[1], attach_time=10.0)]
    plan = plan_cluster(views, ClusterRules(max_devices_per_user=1))
    [finding] = plan.findings
    assert finding.host is None
    assert finding.finding.message == "User bob is using 2 devices which is 1 more than the " \
        "maximum allowed"
    [(host, detachment)] = finding.detachments
    assert (host, detachment.eid, detachment.uid, detachment.device_index) == ("b", "e1", 2002, 1)
    assert detachment.reason == "device 1 on b is the one user bob attached most recently"
    [(host, termination)] = finding.terminations
    assert (host, termination.process.pid, termination.devices) == ("b", 100, (1,))
    assert plan.plans["b"].detachments == (detachment,)
    assert plan.plans["a"].empty
    assert finding.finding.details["device"] == ["a:0", "b:1"]


def test_unknown_is_not_zero():
    """Host c did not answer: only what a and b show is counted, and it is within limits."""
    views = [_host("a", "bob", 1001, [0]), _host("b", "bob", 1001, [0])]
    assert plan_cluster(views, ClusterRules(max_devices_per_user=2)).empty
    assert not plan_cluster(views, ClusterRules(max_devices_per_user=1)).empty


def test_newest_process_by_wall_clock_across_hosts():
    """b booted 400 s after a: its process started at tick 20000 (1600 s) is newer than a's
    at tick 50000 (1500 s), though its ticks are fewer."""
    views = [
        _host("a", "bob", 1001, [0], running=[0], boot_time=1000.0, start=50000),
        _host("b", "bob", 1001, [0], running=[0], boot_time=1400.0, start=20000),
    ]
    plan = plan_cluster(views, ClusterRules(max_memory_per_user="1500mi"))
    [finding] = plan.findings
    assert [(h, t.process.pid, t.process.facts.start) for h, t in finding.terminations] == [
        ("b", 100, 20000)]


def test_per_host_rules_name_the_host_own_processes():
    views = [_host("a", "bob", 1001, [0], running=[2])]
    plan = plan_cluster(views, ClusterRules())
    [finding] = plan.findings
    assert finding.host == "a"
    assert finding.finding.message == "Process 100 from environment e1 is using non-attached " \
        "GPU(s) 2"


def test_exempt_user_by_name_on_every_host():
    views = [_host("a", "bob", 1001, [0], running=[2]), _host("b", "bob", 7, [0, 1, 2])]
    rules = ClusterRules(max_devices_per_user=1)
    assert {f.finding.rule for f in plan_cluster(views, rules).findings} == {
        "env-devices", "max-devices-per-user"}
    exempt = ClusterRules(max_devices_per_user=1, exempt_users=frozenset({"bob"}))
    assert plan_cluster(views, exempt).empty  # as on one host: no rule touches bob
