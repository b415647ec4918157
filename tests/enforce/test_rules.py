"""The enforcement rules, on hand-made snapshots: what an admin reads and what gets done."""

from __future__ import annotations

from genv.domain.models import Attachment, Device, EnvConfig, Environment, RegisteredProcess
from genv.domain.observation import (
    Membership,
    Observation,
    ObservedProcess,
    ProcessFacts,
    Usage,
    resolve,
)
from genv.domain.values import replace
from genv.enforce.findings import Detachment, Finding, Termination
from genv.enforce.plan import combine
from genv.enforce.rules import (
    ENV_DEVICES,
    ENV_MEMORY,
    MAX_DEVICES_PER_USER,
    MAX_MEMORY_PER_USER,
    NON_ENV_PROCESSES,
    RuleConfig,
    env_devices,
    env_memory,
    max_devices_per_user,
    max_memory_per_user,
    non_env_processes,
    survey,
)

ALICE, BOB = 1000, 1001
NAMES = {0: "root", ALICE: "alice", BOB: "bob"}
GI = 1024**3
MI = 1024**2

# Every rule off: tests switch on the one they look at.
NONE = RuleConfig(env_devices=False, env_memory=False)


def make_env(eid: str, uid: int = ALICE, gpu_memory: str | None = None) -> Environment:
    return Environment(
        eid=eid,
        uid=uid,
        username=NAMES.get(uid),
        creation=1.0,
        config=EnvConfig(gpu_memory=gpu_memory),
        processes=(RegisteredProcess(10_000 + uid, 1),),
    )


def attached(env: Environment, index: int, at: float = 100.0,
             gpu_memory: str | None = None) -> Attachment:
    return Attachment(index, env.eid, env.uid, at, gpu_memory or env.config.gpu_memory)


def process(
    pid: int,
    usage: dict[int, int],
    env: Environment | None = None,
    uid: int = ALICE,
    started: int | None = None,
    name: str = "python",
    exe: str | None = None,
    membership: Membership | None = None,
    note: str = "",
) -> ObservedProcess:
    """A GPU process using ``usage`` bytes per device; in ``env`` when given."""
    if membership is None:
        membership = Membership.IN_ENV if env is not None else Membership.NO_ENV
    facts = ProcessFacts(
        pid=pid,
        start=pid if started is None else started,  # higher pid, newer process
        uid=uid,
        username=NAMES.get(uid),
        name=name,
        claimed_eid=env.eid if env is not None else None,
        exe=exe or f"/usr/bin/{name}",
    )
    return ObservedProcess(
        facts,
        tuple(Usage(index, used) for index, used in usage.items()),
        membership,
        env if membership is Membership.IN_ENV else None,
        note,
    )


def snapshot(processes=(), environments=(), attachments=(), devices: int = 4,
             unreadable: frozenset[int] = frozenset()) -> Observation:
    return Observation(
        devices=tuple(
            Device(index, f"GPU-{index}", "Simulated GPU", 80 * GI) for index in range(devices)
        ),
        processes=tuple(processes),
        environments=tuple(environments),
        attachments=tuple(attachments),
        unusable_uids=unreadable,
    )


def messages(findings: list[Finding]) -> list[str]:
    return [finding.message for finding in findings]


def terminated(findings: list[Finding]) -> list[int]:
    return [t.process.pid for f in findings for t in f.terminations]


def detached(findings: list[Finding]) -> list[tuple[str, int]]:
    return [(d.eid, d.device_index) for f in findings for d in f.detachments]


# -- which rules run -----------------------------------------------------------------------


def test_defaults_are_env_devices_and_env_memory_only():
    config = RuleConfig()
    assert not config.non_env_processes
    assert config.env_devices and config.env_memory
    assert config.max_devices_per_user is None and config.max_memory_per_user is None


def test_survey_runs_only_the_enabled_rules():
    e1 = make_env("e1", gpu_memory="1g")
    stray = process(100, {0: GI})
    wrong_device = process(101, {1: GI}, env=e1)
    over = process(102, {0: 2 * GI}, env=e1)
    snap = snapshot([stray, wrong_device, over], [e1], [attached(e1, 0, 1.0)])

    assert survey(snap, NONE) == []
    rules = [
        (RuleConfig(non_env_processes=True, env_devices=False, env_memory=False),
         NON_ENV_PROCESSES),
        (RuleConfig(env_devices=True, env_memory=False), ENV_DEVICES),
        (RuleConfig(env_devices=False, env_memory=True), ENV_MEMORY),
        (RuleConfig(env_devices=False, env_memory=False, max_devices_per_user=0),
         MAX_DEVICES_PER_USER),
        (RuleConfig(env_devices=False, env_memory=False, max_devices_for_user={ALICE: 0}),
         MAX_DEVICES_PER_USER),
        (RuleConfig(env_devices=False, env_memory=False, max_memory_per_user="1g"),
         MAX_MEMORY_PER_USER),
        (RuleConfig(env_devices=False, env_memory=False, max_memory_for_user={ALICE: "1g"}),
         MAX_MEMORY_PER_USER),
    ]
    for config, rule in rules:
        findings = survey(snap, config)
        assert findings, rule
        assert {finding.rule for finding in findings} == {rule}


def test_default_survey_leaves_processes_outside_environments_alone():
    snap = snapshot([process(100, {0: GI}), process(101, {1: GI}, uid=BOB)])
    assert survey(snap, RuleConfig()) == []


# -- non-environment processes -------------------------------------------------------------


def test_non_env_process_message_and_termination():
    e1 = make_env("e1")
    inside = process(200, {0: GI}, env=e1)
    outside = process(63600, {0: 7295 * MI, 2: MI})
    snap = snapshot([inside, outside], [e1], [attached(e1, 0)])

    findings = non_env_processes(snap, NONE)

    assert messages(findings) == ["Process 63600 is not running in a GPU environment"]
    (termination,) = findings[0].terminations
    assert termination.process is outside
    assert termination.devices == (0, 2)
    assert termination.rule == NON_ENV_PROCESSES


def test_impostor_is_outside_any_environment_and_said_to_claim_one_it_does_not_own():
    e1 = make_env("e1", uid=ALICE)
    facts = ProcessFacts(300, 5.0, BOB, "bob", "python", "e1")
    membership, env, note = resolve(facts, (e1,), frozenset())
    impostor = ObservedProcess(facts, (Usage(0, GI),), membership, env, note)
    snap = snapshot([impostor], [e1], [attached(e1, 0)])

    assert membership is Membership.IMPOSTOR
    assert survey(snap, RuleConfig()) == []  # not a member: no env rule sees it
    findings = survey(snap, RuleConfig(non_env_processes=True))
    assert messages(findings) == [
        "Process 300 is not running in a GPU environment: "
        "it claims environment e1 of alice, which it does not own"
    ]
    assert terminated(findings) == [300]
    assert detached(findings) == []


def test_impostor_does_not_count_against_the_environment_it_claims():
    e1 = make_env("e1", uid=ALICE, gpu_memory="2g")
    own = process(301, {0: GI}, env=e1)
    impostor = process(302, {0: 5 * GI}, uid=BOB, membership=Membership.IMPOSTOR,
                       note="it claims environment e1 of alice, which it does not own")
    snap = snapshot([own, impostor], [e1], [attached(e1, 0)])
    assert survey(snap, RuleConfig(max_devices_per_user=1)) == []


# -- environment devices -------------------------------------------------------------------


def test_env_devices_message_names_only_the_non_attached_devices():
    e1 = make_env("e1")
    fine = process(122, {0: GI}, env=e1)
    stray = process(123, {0: GI, 1: GI, 3: GI}, env=e1)
    snap = snapshot([fine, stray], [e1], [attached(e1, 0)])

    findings = env_devices(snap, NONE)

    assert messages(findings) == [
        "Process 123 from environment e1 is using non-attached GPU(s) 1,3"
    ]
    (termination,) = findings[0].terminations
    assert termination.process is stray
    assert termination.devices == (1, 3)
    assert survey(snap, RuleConfig(env_devices=False, env_memory=False)) == []


def test_env_devices_with_no_attachment_at_all():
    e1 = make_env("e1")
    snap = snapshot([process(123, {1: GI}, env=e1)], [e1], [])
    assert messages(survey(snap, RuleConfig())) == [
        "Process 123 from environment e1 is using non-attached GPU(s) 1"
    ]


def test_env_devices_looks_at_the_attachments_of_the_right_owner():
    """Two users may pick the same environment id; attachments are per (owner, id)."""
    alice_e1 = make_env("e1", uid=ALICE)
    bob_e1 = make_env("e1", uid=BOB)
    bobs = process(124, {1: GI}, env=bob_e1, uid=BOB)
    snap = snapshot([bobs], [alice_e1, bob_e1], [attached(alice_e1, 1), attached(bob_e1, 0)])
    assert messages(env_devices(snap, NONE)) == [
        "Process 124 from environment e1 is using non-attached GPU(s) 1"
    ]


# -- environment memory capacity -----------------------------------------------------------


def test_env_memory_message_is_in_decimal_megabytes_rounded_down():
    e1 = make_env("e1", gpu_memory="2g")
    snap = snapshot([process(400, {0: 3000 * MI}, env=e1)], [e1], [attached(e1, 0)])

    findings = env_memory(snap, NONE)

    assert messages(findings) == [
        "Environment e1 is using 3145m on device 0 which is 1145m over its capacity of 2g"
    ]
    assert terminated(findings) == [400]
    assert survey(snap, RuleConfig(env_memory=False)) == []


def test_env_memory_terminates_newest_first_until_under_capacity():
    e1 = make_env("e1", gpu_memory="2g")
    oldest = process(401, {0: 1000 * MI}, env=e1, started=10.0)
    middle = process(402, {0: 1000 * MI}, env=e1, started=20.0)
    newest = process(403, {0: 1000 * MI}, env=e1, started=30.0)
    snap = snapshot([middle, newest, oldest], [e1], [attached(e1, 0)])

    findings = env_memory(snap, NONE)

    # 1145m over: the newest frees 1048m, not enough; the next one too
    assert terminated(findings) == [403, 402]
    assert all(t.chosen for t in findings[0].terminations)
    assert "newest process of environment e1" in findings[0].terminations[0].reason


def test_env_memory_acts_only_on_devices_where_the_capacity_is_exceeded():
    e1 = make_env("e1", gpu_memory="2g")
    on_0 = process(410, {0: 3 * GI}, env=e1, started=1.0)
    on_1 = process(411, {1: GI}, env=e1, started=2.0)  # newer, but device 1 is fine
    snap = snapshot([on_0, on_1], [e1], [attached(e1, 0), attached(e1, 1)])

    findings = env_memory(snap, NONE)

    assert messages(findings) == [
        "Environment e1 is using 3221m on device 0 which is 1221m over its capacity of 2g"
    ]
    assert terminated(findings) == [410]


def test_env_memory_capacity_of_the_attachment_first_then_of_the_environment():
    e1 = make_env("e1", gpu_memory="10g")
    snap = snapshot(
        [process(420, {0: 5 * GI}, env=e1), process(421, {1: 5 * GI}, env=e1)],
        [e1],
        [attached(e1, 0, gpu_memory="4g"), Attachment(1, "e1", ALICE, 100.0, None)],
    )
    findings = env_memory(snap, NONE)
    assert messages(findings) == [
        "Environment e1 is using 5368m on device 0 which is 1368m over its capacity of 4g"
    ]
    assert terminated(findings) == [420]


def test_env_memory_without_a_capacity_or_under_it_finds_nothing():
    e1 = make_env("e1")
    e2 = make_env("e2", gpu_memory="4g")
    snap = snapshot(
        [process(430, {0: 70 * GI}, env=e1), process(431, {1: 4 * 10**9}, env=e2)],
        [e1, e2],
        [attached(e1, 0), attached(e2, 1)],
    )
    assert env_memory(snap, NONE) == []


def test_env_memory_sums_the_processes_of_the_environment_only():
    e1 = make_env("e1", gpu_memory="2g")
    e2 = make_env("e2", gpu_memory="2g")
    snap = snapshot(
        [process(440, {0: 1500 * 10**6}, env=e1), process(441, {0: 1500 * 10**6}, env=e2),
         process(442, {0: 10 * GI})],
        [e1, e2],
        [attached(e1, 0), attached(e2, 0)],
    )
    assert env_memory(snap, NONE) == []


# -- devices per user ----------------------------------------------------------------------


def test_max_devices_per_user_quick_start():
    env = make_env("67609", uid=ALICE)
    quickstart = process(67708, {0: 7295 * MI}, env=env)
    snap = snapshot([quickstart], [env], [attached(env, 0)])

    assert survey(snap, RuleConfig(max_devices_per_user=1)) == []
    findings = survey(snap, RuleConfig(max_devices_per_user=0))

    assert messages(findings) == [
        "User alice is using 1 devices which is 1 more than the maximum allowed"
    ]
    assert terminated(findings) == [67708]
    assert detached(findings) == [("67609", 0)]
    (detachment,) = findings[0].detachments
    assert (detachment.uid, detachment.username) == (ALICE, "alice")


def test_max_devices_detaches_idle_devices_first_then_the_most_recent():
    e1 = make_env("e1")
    e2 = make_env("e2")
    attachments = [
        attached(e1, 0, at=1.0),  # busy, oldest: kept
        attached(e1, 1, at=2.0),  # idle: goes first
        attached(e2, 2, at=3.0),  # busy, most recent: goes second
        attached(e1, 3, at=2.5),  # busy: kept
    ]
    on_0 = process(500, {0: GI}, env=e1)
    on_2 = process(501, {2: GI}, env=e2)
    on_3 = process(502, {3: GI}, env=e1)
    snap = snapshot([on_0, on_2, on_3], [e1, e2], attachments)

    findings = max_devices_per_user(snap, RuleConfig(max_devices_per_user=2))

    assert messages(findings) == [
        "User alice is using 4 devices which is 2 more than the maximum allowed"
    ]
    assert sorted(detached(findings)) == [("e1", 1), ("e2", 2)]
    assert terminated(findings) == [501]  # runs on a detached device
    assert all(d.chosen for d in findings[0].detachments)


def test_max_devices_terminates_every_process_on_a_detached_device():
    e1 = make_env("e1")
    e2 = make_env("e2")
    attachments = [attached(e1, 0, at=1.0), attached(e1, 1, at=2.0), attached(e2, 1, at=2.0)]
    snap = snapshot(
        [process(510, {0: GI}, env=e1), process(511, {1: GI}, env=e1),
         process(512, {1: GI, 0: GI}, env=e2)],
        [e1, e2],
        attachments,
    )
    findings = max_devices_per_user(snap, RuleConfig(max_devices_per_user=1))
    assert messages(findings) == [
        "User alice is using 2 devices which is 1 more than the maximum allowed"
    ]
    assert sorted(detached(findings)) == [("e1", 1), ("e2", 1)]
    assert sorted(terminated(findings)) == [511, 512]


def test_max_devices_for_user_overrides_the_per_user_maximum():
    alice_env = make_env("a", uid=ALICE)
    bob_env = make_env("b", uid=BOB)
    snap = snapshot(
        [],
        [alice_env, bob_env],
        [attached(alice_env, 0), attached(alice_env, 1), attached(bob_env, 2),
         attached(bob_env, 3)],
    )
    config = RuleConfig(max_devices_per_user=1, max_devices_for_user={ALICE: 2})
    assert messages(survey(snap, config)) == [
        "User bob is using 2 devices which is 1 more than the maximum allowed"
    ]
    only_for = RuleConfig(max_devices_for_user={BOB: 0})
    assert messages(survey(snap, only_for)) == [
        "User bob is using 2 devices which is 2 more than the maximum allowed"
    ]
    assert sorted(detached(survey(snap, only_for))) == [("b", 2), ("b", 3)]


def test_max_devices_counts_devices_not_attachments():
    e1 = make_env("e1")
    e2 = make_env("e2")
    snap = snapshot([], [e1, e2], [attached(e1, 0), attached(e2, 0)])
    assert survey(snap, RuleConfig(max_devices_per_user=1)) == []


# -- GPU memory per user -------------------------------------------------------------------


def test_max_memory_per_user_sums_across_devices_and_terminates_newest_first():
    e1 = make_env("e1")
    oldest = process(600, {0: 4 * 10**9}, env=e1, started=1.0)
    middle = process(601, {1: 4 * 10**9}, started=2.0)  # outside environments counts too
    newest = process(602, {0: 4 * 10**9}, env=e1, started=3.0)
    bobs = process(603, {2: 9 * 10**9}, uid=BOB, started=4.0)
    snap = snapshot([oldest, middle, newest, bobs], [e1], [attached(e1, 0), attached(e1, 1)])

    findings = max_memory_per_user(snap, RuleConfig(max_memory_per_user="10g"))

    assert messages(findings) == [
        "User alice is using 12000m of GPU memory which is 2000m over the maximum of 10g"
    ]
    assert terminated(findings) == [602]


def test_max_memory_for_user_overrides_the_per_user_maximum():
    snap = snapshot([process(610, {0: 6 * GI}), process(611, {1: 6 * GI}, uid=BOB)])
    config = RuleConfig(max_memory_per_user="8g", max_memory_for_user={BOB: "4g"})
    assert messages(survey(snap, config)) == [
        "User bob is using 6442m of GPU memory which is 2442m over the maximum of 4g"
    ]
    assert terminated(survey(snap, config)) == [611]
    assert survey(snap, RuleConfig(max_memory_for_user={ALICE: "7g"})) == []


# -- exemptions and unknown processes ------------------------------------------------------


def test_exempt_users_are_never_terminated_nor_detached():
    alice_env = make_env("a", uid=ALICE, gpu_memory="1g")
    procs = [
        process(700, {0: 10 * GI}),  # alice, outside any environment
        process(701, {1: 10 * GI}, env=alice_env),  # over capacity, on a non-attached device
        process(702, {3: GI}, uid=BOB),
    ]
    snap = snapshot(procs, [alice_env], [attached(alice_env, 0), attached(alice_env, 2)])
    config = RuleConfig(
        non_env_processes=True, max_devices_per_user=0, max_memory_per_user="1m",
        exempt_uids=frozenset({ALICE}),
    )
    findings = survey(snap, config)
    assert set(terminated(findings)) == {702}
    assert detached(findings) == []


def test_exempt_programs_by_executable_path_are_never_terminated():
    e1 = make_env("e1", gpu_memory="1g")
    xorg = process(800, {0: GI}, uid=0, name="Xorg", exe="/usr/lib/xorg/Xorg")
    in_env = process(801, {0: 3 * GI}, env=e1, name="Xorg", exe="/usr/lib/xorg/Xorg",
                     started=900)
    other = process(802, {0: GI}, uid=0, name="python")
    snap = snapshot([xorg, in_env, other], [e1], [attached(e1, 1)])
    config = RuleConfig(non_env_processes=True, max_devices_per_user=0,
                        max_memory_per_user="1m",
                        exempt_programs=frozenset({"/usr/lib/xorg/Xorg"}))
    findings = survey(snap, config)
    assert set(terminated(findings)) == {802}


def test_a_process_calling_itself_exempt_is_not():
    """Its name (comm, argv) is the process's own choice; only its executable counts."""
    poser = process(810, {0: GI}, uid=BOB, name="Xorg", exe="/home/bob/miner")
    snap = snapshot([poser])
    config = RuleConfig(non_env_processes=True,
                        exempt_programs=frozenset({"/usr/lib/xorg/Xorg"}))
    assert terminated(survey(snap, config)) == [810]


def test_unknown_membership_is_never_acted_on():
    e1 = make_env("e1", gpu_memory="1g")
    unknown = process(900, {0: 70 * GI, 1: GI}, uid=BOB, membership=Membership.UNKNOWN,
                      note="its environment variables could not be read")
    snap = snapshot([unknown], [e1], [attached(e1, 3)])
    config = RuleConfig(non_env_processes=True, max_devices_per_user=0,
                        max_memory_per_user="1m")
    findings = survey(snap, config)
    assert 900 not in terminated(findings)
    assert all("900" not in message for message in messages(findings))


# -- resolve -------------------------------------------------------------------------------


def facts(uid: int | None, claimed: str | None, readable: bool = True) -> ProcessFacts:
    return ProcessFacts(4242, 1.0, uid, NAMES.get(uid) if uid is not None else None,
                        "python", claimed, environ_readable=readable)


def test_resolve_own_environment():
    e1 = make_env("e1", uid=ALICE)
    assert resolve(facts(ALICE, "e1"), (e1,), frozenset()) == (Membership.IN_ENV, e1, "")


def test_resolve_accepts_an_index_by_environment_id_too():
    e1 = make_env("e1", uid=ALICE)
    assert resolve(facts(ALICE, "e1"), {"e1": [e1]}, frozenset())[:2] == (
        Membership.IN_ENV, e1)


def test_resolve_picks_the_own_one_when_two_users_use_the_same_id():
    alice_e1 = make_env("e1", uid=ALICE)
    bob_e1 = make_env("e1", uid=BOB)
    membership, env, _ = resolve(facts(BOB, "e1"), (alice_e1, bob_e1), frozenset())
    assert (membership, env) == (Membership.IN_ENV, bob_e1)


def test_resolve_root_in_a_container_started_from_an_environment():
    e1 = make_env("e1", uid=ALICE)
    assert resolve(facts(0, "e1"), (e1,), frozenset())[:2] == (Membership.IN_ENV, e1)


def test_resolve_root_claiming_an_id_several_users_have_is_unknown():
    membership, env, note = resolve(
        facts(0, "e1"), (make_env("e1", uid=ALICE), make_env("e1", uid=BOB)), frozenset()
    )
    assert (membership, env) == (Membership.UNKNOWN, None)
    assert "several users" in note


def test_resolve_impostor():
    e1 = make_env("e1", uid=ALICE)
    membership, env, note = resolve(facts(BOB, "e1"), (e1,), frozenset())
    assert (membership, env) == (Membership.IMPOSTOR, None)
    assert note == "it claims environment e1 of alice, which it does not own"


def test_resolve_unreadable_environ_is_unknown():
    e1 = make_env("e1", uid=ALICE)
    membership, env, note = resolve(facts(ALICE, None, readable=False), (e1,), frozenset())
    assert (membership, env) == (Membership.UNKNOWN, None)
    assert note == "its environment variables could not be read"


def test_resolve_unknown_state_of_the_claiming_user_is_unknown():
    # bob's records could not be read through no fault of his (an I/O error): his e1 may be
    # among them
    e1 = make_env("e1", uid=ALICE)
    for claimed in ("e1", "e9"):
        membership, env, note = resolve(facts(BOB, claimed), (e1,), frozenset({BOB}),
                                        frozenset({BOB}))
        assert (membership, env) == (Membership.UNKNOWN, None)
        assert "state file could not be read" in note
    # root may belong to anyone's environment
    assert resolve(facts(0, "e9"), (e1,), frozenset({BOB}))[0] is Membership.UNKNOWN


def test_resolve_a_user_who_broke_their_own_file_is_not_shielded():
    """Making one's own file unusable must not protect one's processes: they are treated as
    in no environment (and so enforced), and the note says why."""
    e1 = make_env("e1", uid=ALICE)
    for claimed in ("e1", "e9"):
        membership, env, note = resolve(facts(BOB, claimed), (e1,), frozenset({BOB}))
        assert (membership, env) == (Membership.NO_ENV, None)
        assert "its owner's state file is unusable" in note
    snap = snapshot([process(950, {0: GI}, uid=BOB, membership=Membership.NO_ENV,
                             note="it claims environment e9, but its owner's state file is "
                                  "unusable")])
    findings = survey(snap, RuleConfig(non_env_processes=True))
    assert terminated(findings) == [950]
    assert messages(findings) == [
        "Process 950 is not running in a GPU environment: it claims environment e9, but its "
        "owner's state file is unusable"]


def test_resolve_unreadable_state_of_another_user_does_not_matter():
    assert resolve(facts(BOB, "e9"), (), frozenset({ALICE}))[0] is Membership.NO_ENV
    e1 = make_env("e1", uid=ALICE)
    assert resolve(facts(ALICE, "e1"), (e1,), frozenset({BOB}))[0] is Membership.IN_ENV


def test_resolve_environment_that_ended_or_no_claim_is_outside():
    # the store drops environments whose processes all exited
    assert resolve(facts(ALICE, "e1"), (), frozenset()) == (Membership.NO_ENV, None, "")
    assert resolve(facts(ALICE, None), (), frozenset()) == (Membership.NO_ENV, None, "")
    assert resolve(facts(ALICE, ""), (), frozenset()) == (Membership.NO_ENV, None, "")


# -- combining -----------------------------------------------------------------------------


def test_combine_terminates_each_process_and_detaches_each_attachment_once():
    e1 = make_env("e1", gpu_memory="1g")
    both = process(1000, {1: 5 * GI}, env=e1)
    snap = snapshot([both], [e1], [attached(e1, 0), attached(e1, 1)])
    findings = survey(snap, RuleConfig(max_devices_per_user=0))
    # env-devices? no: both devices attached; env-memory and max-devices both hit 1000
    assert {f.rule for f in findings} == {ENV_MEMORY, MAX_DEVICES_PER_USER}

    plan = combine(findings)

    assert [t.process.pid for t in plan.terminations] == [1000]
    assert plan.terminations[0].rule == ENV_MEMORY  # the first rule's reason is kept
    assert sorted((d.eid, d.device_index) for d in plan.detachments) == [("e1", 0), ("e1", 1)]
    assert plan.findings == tuple(findings)
    assert not plan.empty


def test_combine_dedups_repeated_detachments_and_terminations():
    e1 = make_env("e1")
    p = process(1100, {0: GI}, env=e1)
    termination = Termination(p, "a", "reason a", (0,))
    detachment = Detachment("e1", ALICE, "alice", 0, "a", "reason")
    findings = [
        Finding("a", "first", (termination,), (detachment,)),
        Finding("b", "second", (Termination(p, "b", "reason b", (0,)),),
                (Detachment("e1", ALICE, "alice", 0, "b", "other"),)),
    ]
    plan = combine(findings)
    assert plan.terminations == (termination,)
    assert plan.detachments == (detachment,)
    assert combine([]).empty


# -- what a user may have written into their own state file --------------------------------


def test_unreadable_capacity_is_no_capacity_not_a_crash():
    """Users own their state files: a capacity that is not a memory amount must not stop the
    enforcer, which would then enforce nothing for anyone."""
    e1 = make_env("e1", gpu_memory="lots")
    e2 = make_env("e2", uid=BOB, gpu_memory="1g")
    snap = snapshot(
        [process(1200, {0: 5 * GI}, env=e1), process(1201, {1: 5 * GI}, env=e2, uid=BOB)],
        [e1, e2],
        [attached(e1, 0), attached(e2, 1)],
    )
    assert terminated(survey(snap, RuleConfig())) == [1201]


def test_attachment_of_an_environment_not_in_the_snapshot_is_counted_safely():
    e1 = make_env("e1")
    gone = make_env("gone")
    snap = snapshot([process(1300, {0: GI}, env=e1)], [e1], [attached(e1, 0), attached(gone, 1)])
    findings = survey(snap, RuleConfig(max_devices_per_user=1))
    assert messages(findings) == [
        "User alice is using 2 devices which is 1 more than the maximum allowed"
    ]
    assert detached(findings) == [("gone", 1)]
    assert terminated(findings) == []


# -- what the JSON log says about each finding ---------------------------------------------
# (every key of a finding's details is a field of its --log-format json line)


def test_process_findings_say_who_what_where_and_why():
    e1 = make_env("e1")
    stray = process(1400, {2: GI, 0: 3 * MI})
    wrong = process(1401, {0: GI, 1: 2 * GI}, env=e1)
    snap = snapshot([stray, wrong], [e1], [attached(e1, 0)])

    (outside,) = non_env_processes(snap, NONE)
    (misplaced,) = env_devices(snap, NONE)

    assert outside.details == {
        "pid": 1400, "uid": ALICE, "user": "alice", "environment": None,
        "process": "python", "device": [0, 2], "memory": GI + 3 * MI,
    }
    (termination,) = outside.terminations
    assert (termination.rule, termination.reason, termination.devices) == (
        NON_ENV_PROCESSES, "Process 1400 is not running in a GPU environment", (0, 2))
    assert misplaced.details == {
        "pid": 1401, "uid": ALICE, "user": "alice", "environment": "e1",
        "process": "python", "device": [1], "memory": 3 * GI,
    }
    (termination,) = misplaced.terminations
    assert (termination.rule, termination.reason, termination.devices) == (
        ENV_DEVICES, "Process 1401 from environment e1 is using non-attached GPU(s) 1", (1,))


def test_env_memory_finding_says_the_use_and_the_capacity():
    e1 = make_env("e1", gpu_memory="2g")
    lone = process(1410, {0: 3 * 10**9, 1: 10**6}, env=e1)
    snap = snapshot([lone], [e1], [attached(e1, 0), attached(e1, 1)])

    (finding,) = env_memory(snap, NONE)

    assert finding.details == {
        "uid": ALICE, "user": "alice", "environment": "e1", "device": [0],
        "memory": 3 * 10**9, "capacity": 2 * 10**9,
    }
    (termination,) = finding.terminations
    assert termination.rule == ENV_MEMORY
    assert termination.devices == (0, 1)  # all of its devices: the process goes as a whole
    assert termination.reason == (
        "it is the newest process of environment e1 on device 0 (frees 3000m)")
    # the only process there: nothing was chosen among several, no "because" line
    assert not termination.chosen


def test_max_devices_finding_says_what_is_detached_and_why():
    e1 = make_env("e1")
    attachments = [attached(e1, 0, at=1.0), attached(e1, 1, at=2.0), attached(e1, 2, at=3.0)]
    working = process(1420, {1: GI, 3: MI}, env=e1)
    snap = snapshot([working], [e1], attachments)

    (finding,) = max_devices_per_user(snap, RuleConfig(max_devices_per_user=1))

    assert finding.details == {
        "uid": ALICE, "user": "alice", "device": [0, 1, 2], "devices": 3, "over": 2}
    assert finding.detachments == (
        Detachment("e1", ALICE, "alice", 2, MAX_DEVICES_PER_USER,
                   "no process of user alice runs on device 2, so no work is lost", chosen=True),
        Detachment("e1", ALICE, "alice", 0, MAX_DEVICES_PER_USER,
                   "no process of user alice runs on device 0, so no work is lost", chosen=True),
    )
    assert finding.terminations == ()
    # the idle ones are gone; now only a busy device can go
    snap = snapshot([working], [e1], attachments[:2])
    (finding,) = max_devices_per_user(snap, RuleConfig(max_devices_per_user=0))
    assert [(d.device_index, d.reason, d.chosen) for d in finding.detachments] == [
        (0, "no process of user alice runs on device 0, so no work is lost", False),
        (1, "device 1 is the one user alice attached most recently", False),
    ]
    (termination,) = finding.terminations
    assert (termination.process, termination.rule, termination.reason, termination.devices) == (
        working, MAX_DEVICES_PER_USER, "its environment e1 is detached from device 1", (1, 3))


def test_max_memory_finding_says_the_use_and_the_limit():
    first = process(1430, {0: 6 * 10**9}, started=1)
    second = process(1431, {2: 5 * 10**9, 1: 10**9}, started=2)
    snap = snapshot([first, second])

    (finding,) = max_memory_per_user(snap, RuleConfig(max_memory_per_user="10g"))

    assert finding.details == {
        "uid": ALICE, "user": "alice", "device": [0, 1, 2], "memory": 12 * 10**9,
        "limit": 10 * 10**9,
    }
    (termination,) = finding.terminations
    assert (termination.process, termination.rule, termination.devices) == (
        second, MAX_MEMORY_PER_USER, (1, 2))
    assert termination.reason == "it is the newest process of user alice (frees 6000m)"
    assert termination.chosen


# -- the greedy choice: newest first, and no more than needed ------------------------------


def test_freeing_exactly_the_excess_is_enough():
    """The newest process is terminated; when what it frees equals the excess exactly, the
    environment is at its capacity again and nobody else is terminated."""
    e1 = make_env("e1", gpu_memory="10b")
    older = process(1500, {0: 10}, env=e1, started=1)
    newest = process(1501, {0: 1}, env=e1, started=2)  # however little it holds
    snap = snapshot([older, newest], [e1], [attached(e1, 0)])
    assert terminated(env_memory(snap, NONE)) == [1501]

    tiny = process(1504, {1: 1}, started=3)
    snap = snapshot([process(1505, {0: 10}, started=1), tiny])
    assert terminated(max_memory_per_user(snap, RuleConfig(max_memory_per_user="10b"))) == [1504]

    alone = process(1502, {0: 10**9}, started=1)
    newer = process(1503, {1: 10**9}, started=2)
    snap = snapshot([alone, newer])
    assert terminated(max_memory_per_user(snap, RuleConfig(max_memory_per_user="1g"))) == [1503]
    assert terminated(max_memory_per_user(snap, RuleConfig(max_memory_per_user="1999999999"))) == [
        1503]


def test_a_user_exactly_at_the_limit_is_within_it():
    snap = snapshot([process(1510, {0: 10**9}), process(1511, {1: 10**9})])
    assert max_memory_per_user(snap, RuleConfig(max_memory_per_user="2g")) == []
    assert max_memory_per_user(snap, RuleConfig(max_memory_per_user="1999999999b")) != []
    e1 = make_env("e1", gpu_memory="2g")
    snap = snapshot([process(1512, {0: 2 * 10**9}, env=e1)], [e1], [attached(e1, 0)])
    assert env_memory(snap, NONE) == []


def test_processes_that_hold_no_memory_are_never_terminated_for_memory():
    """A process whose memory the driver does not report frees nothing: terminating it
    would not bring anyone under a limit."""
    e1 = make_env("e1", gpu_memory="1g")
    big = process(1520, {0: 2 * 10**9}, env=e1, started=1)
    silent = process(1521, {0: None}, env=e1, started=2)  # newest
    empty = process(1522, {0: 0}, env=e1, started=3)  # newer still
    snap = snapshot([big, silent, empty], [e1], [attached(e1, 0)])

    assert terminated(env_memory(snap, NONE)) == [1520]
    assert terminated(max_memory_per_user(snap, RuleConfig(max_memory_per_user="1g"))) == [1520]


def unknown_start(observed: ObservedProcess) -> ObservedProcess:
    return replace(observed, facts=replace(observed.facts, start=None))


def test_newest_is_told_by_start_not_by_pid_and_an_unknown_start_is_oldest():
    e1 = make_env("e1", gpu_memory="1g")
    newest = process(1530, {0: 10**9}, env=e1, started=500)  # pids wrap: a low pid is newer
    older = process(1590, {0: 10**9}, env=e1, started=400)
    unknown = unknown_start(process(1599, {0: 10**9}, env=e1))
    snap = snapshot([older, unknown, newest], [e1], [attached(e1, 0)])
    assert terminated(env_memory(snap, NONE)) == [1530, 1590]

    first_tick = process(1531, {0: 10**9}, started=1)  # the earliest start there is
    unknown = unknown_start(process(1532, {1: 10**9}))
    snap = snapshot([unknown, first_tick])
    assert terminated(max_memory_per_user(snap, RuleConfig(max_memory_per_user="1g"))) == [1531]


# -- every environment, device and user is looked at ---------------------------------------


def test_env_memory_goes_on_past_environments_and_devices_with_nothing_to_check():
    idle = make_env("idle", gpu_memory="1g")  # no process
    uncapped = make_env("uncapped")  # no capacity anywhere
    garbled = make_env("garbled")
    over = make_env("over")
    snap = snapshot(
        [process(1600, {0: 5 * GI}, env=uncapped),
         process(1601, {0: 5 * GI, 1: 5 * GI, 2: 5 * GI, 3: 5 * GI}, env=garbled),
         process(1602, {0: 5 * GI, 1: 5 * GI, 2: 5 * GI, 3: 2 * GI}, env=over)],
        [idle, uncapped, garbled, over],
        [attached(idle, 0), attached(uncapped, 0),
         # no capacity on device 0, one that is not a memory amount on 1, 4g on 3
         Attachment(0, "garbled", ALICE, 100.0, None), attached(garbled, 1, gpu_memory="lots"),
         attached(garbled, 3, gpu_memory="4g"),
         # under the capacity on devices 0 to 2, over it on 3
         attached(over, 0, gpu_memory="8g"), attached(over, 1, gpu_memory="8g"),
         attached(over, 2, gpu_memory="8g"), attached(over, 3, gpu_memory="1g")],
    )
    findings = env_memory(snap, NONE)
    assert messages(findings) == [
        "Environment garbled is using 5368m on device 3 which is 1368m over its capacity of 4g",
        "Environment over is using 2147m on device 3 which is 1147m over its capacity of 1g",
    ]


def test_env_memory_checks_capacities_from_the_attachment_or_the_environment_alone():
    on_attachment = make_env("a")  # the capacity was given on attaching only
    on_environment = make_env("b", gpu_memory="1g")
    snap = snapshot(
        [process(1610, {0: 2 * GI}, env=on_attachment),
         process(1611, {1: 2 * GI}, env=on_environment)],
        [on_attachment, on_environment],
        [attached(on_attachment, 0, gpu_memory="1g"), Attachment(1, "b", ALICE, 100.0, None)],
    )
    assert terminated(env_memory(snap, NONE)) == [1610, 1611]


def test_env_devices_checks_members_only_whatever_else_a_process_says():
    """Only a member (IN_ENV) is held to its environment's devices; a process whose
    membership could not be told is never acted on, even if an environment is named."""
    e1 = make_env("e1")
    unsure = ObservedProcess(process(1620, {1: GI}).facts, (Usage(1, GI),), Membership.UNKNOWN,
                             e1, "its environment variables could not be read")
    snap = snapshot([unsure], [e1], [attached(e1, 0)])
    assert env_devices(snap, NONE) == []


def test_limits_of_later_users_are_checked_after_exempt_or_unlimited_ones():
    alice_env = make_env("a", uid=ALICE)
    bob_env = make_env("b", uid=BOB)
    snap = snapshot(
        [process(1630, {0: 5 * GI}), process(1631, {1: 5 * GI}, uid=BOB)],
        [alice_env, bob_env],
        [attached(alice_env, 0), attached(alice_env, 1), attached(bob_env, 2),
         attached(bob_env, 3)],
    )
    exempt_alice = RuleConfig(env_devices=False, env_memory=False, max_devices_per_user=1,
                              exempt_uids=frozenset({ALICE}))
    assert messages(max_devices_per_user(snap, exempt_alice)) == [
        "User bob is using 2 devices which is 1 more than the maximum allowed"]
    only_bob = RuleConfig(max_memory_for_user={BOB: "1g"})
    assert terminated(max_memory_per_user(snap, only_bob)) == [1631]


# -- names -----------------------------------------------------------------------------------


def test_a_user_is_named_by_their_own_name_or_uid():
    nameless = Environment("e1", ALICE, None, 1.0, processes=(RegisteredProcess(1, 1),))
    bobs = ObservedProcess(ProcessFacts(1640, 1, BOB, "bob", "python", None),
                           (Usage(0, GI),), Membership.NO_ENV)
    alices = ObservedProcess(ProcessFacts(1641, 2, ALICE, "alice", "python", "e1"),
                             (Usage(1, GI),), Membership.IN_ENV, nameless)
    snap = snapshot([bobs, alices], [nameless], [attached(nameless, 1), attached(nameless, 2)])
    assert messages(max_devices_per_user(snap, RuleConfig(max_devices_per_user=1))) == [
        "User alice is using 2 devices which is 1 more than the maximum allowed"]

    snap = snapshot([bobs], [nameless], [attached(nameless, 1), attached(nameless, 2)])
    assert messages(max_devices_per_user(snap, RuleConfig(max_devices_per_user=1))) == [
        "User uid 1000 is using 2 devices which is 1 more than the maximum allowed"]

    unnamed = ObservedProcess(ProcessFacts(1642, 1, 4321, None, "python", None),
                              (Usage(0, 2 * 10**9),), Membership.NO_ENV)
    (finding,) = max_memory_per_user(snapshot([unnamed]), RuleConfig(max_memory_per_user="1g"))
    assert finding.message == (
        "User uid 4321 is using 2000m of GPU memory which is 1000m over the maximum of 1g")
    assert finding.terminations[0].reason == (
        "it is the newest process of user uid 4321 (frees 2000m)")


# -- exempt processes still count as work --------------------------------------------------


def test_a_device_where_only_an_exempt_program_runs_is_not_idle():
    """Exempt programs are never terminated, but a device where one of the user's runs holds
    their work: an idle device goes first, even one attached earlier."""
    e1 = make_env("e1")
    renderer = process(1650, {0: GI}, env=e1, exe="/usr/bin/renderer")
    snap = snapshot([renderer], [e1], [attached(e1, 0, at=2.0), attached(e1, 1, at=1.0)])
    config = RuleConfig(env_devices=False, env_memory=False, max_devices_per_user=1,
                        exempt_programs=frozenset({"/usr/bin/renderer"}))

    findings = survey(snap, config)

    assert detached(findings) == [("e1", 1)]
    assert terminated(findings) == []
    assert findings[0].detachments[0].reason == (
        "no process of user alice runs on device 1, so no work is lost")
