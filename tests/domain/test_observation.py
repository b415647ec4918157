"""The one membership rule (genv.domain.observation.resolve) at its edges, and what an
observed process and an observation say about themselves."""

from __future__ import annotations

from genv.domain.models import Attachment, Device, Environment, GpuSnapshot, RegisteredProcess
from genv.domain.observation import (
    Membership,
    Observation,
    ObservedProcess,
    ProcessFacts,
    Usage,
    index_by_eid,
    resolve,
)

ALICE, BOB = 1000, 1001
LEGACY = (
    "it claims environment {} of genv 1.4.3, which root has not taken over yet "
    "(sudo genv migrate)"
)


def env(eid: str, uid: int, username: str | None = None) -> Environment:
    return Environment(eid, uid, username, 1.0, processes=(RegisteredProcess(10, 1),))


def facts(uid: int | None, claimed: str | None) -> ProcessFacts:
    return ProcessFacts(4242, 7, uid, None, "python", claimed)


# -- root ----------------------------------------------------------------------------------


def test_root_in_the_only_environment_of_that_id_is_a_member():
    e1 = env("e1", ALICE)
    assert resolve(facts(0, "e1"), [e1], frozenset()) == (Membership.IN_ENV, e1, "")


def test_root_claiming_an_id_nobody_has_is_outside():
    assert resolve(facts(0, "e9"), [env("e1", ALICE)], frozenset()) == (
        Membership.NO_ENV, None, "")


def test_root_claiming_a_missing_id_while_only_roots_own_file_is_unusable_is_outside():
    """Root's own broken file shields none of root's processes."""
    assert resolve(facts(0, "e9"), [], frozenset({0})) == (
        Membership.NO_ENV, None, "it claims environment e9, but its owner's state file is unusable")


def test_root_claiming_a_missing_id_while_a_users_file_is_unusable_could_be_theirs():
    for unusable in ({1}, {ALICE}, {0, ALICE}):
        assert resolve(facts(0, "e9"), [], frozenset(unusable)) == (
            Membership.UNKNOWN, None,
            "it claims environment e9, and some state file could not be read")


# -- other users ---------------------------------------------------------------------------


def test_an_impostor_is_told_by_the_owners_name_or_uid():
    assert resolve(facts(BOB, "e1"), [env("e1", ALICE, "alice")], frozenset())[2] == (
        "it claims environment e1 of alice, which it does not own")
    assert resolve(facts(BOB, "e1"), [env("e1", ALICE)], frozenset())[2] == (
        "it claims environment e1 of uid 1000, which it does not own")


def test_a_user_whose_file_cannot_be_read_by_no_fault_of_theirs_is_unknown():
    assert resolve(facts(BOB, "e1"), [env("e1", ALICE)], frozenset({BOB}), frozenset({BOB})) == (
        Membership.UNKNOWN, None, "it claims environment e1, whose state file could not be read")


# -- genv 1.4.3's ids, not taken over yet --------------------------------------------------


def test_a_claim_of_an_id_only_genv_143_names_could_not_be_told():
    others = [env("e2", ALICE), env("e2", BOB)]  # bob's e2 is no claim of e1
    for environments in ([], {}, others, index_by_eid(others)):
        assert resolve(facts(BOB, "e1"), environments, frozenset(), legacy_eids=frozenset(
            {"e1"})) == (Membership.UNKNOWN, None, LEGACY.format("e1"))
    # an id that 1.4.3 does not name is no such claim
    assert resolve(facts(BOB, "e3"), [], frozenset(), legacy_eids=frozenset({"e1"})) == (
        Membership.NO_ENV, None, "")


def test_a_claim_of_a_143_id_by_a_user_whose_own_file_is_unusable_could_not_be_told():
    """Bob's own file is broken, so his claim of alice's id would be "no environment"; but
    genv 1.4.3 names that id too, and there it may be his."""
    for environments in ([env("e1", ALICE)], index_by_eid([env("e1", ALICE)])):
        assert resolve(facts(BOB, "e1"), environments, frozenset({BOB}),
                       legacy_eids=frozenset({"e1"})) == (
            Membership.UNKNOWN, None, LEGACY.format("e1"))


def test_a_claim_that_matches_an_environment_here_is_decided_here():
    e1 = env("e1", ALICE)
    legacy = frozenset({"e1"})
    assert resolve(facts(ALICE, "e1"), [e1], frozenset(), legacy_eids=legacy) == (
        Membership.IN_ENV, e1, "")
    # bob's claim of e1: alice has an e1 here, but ids of genv 1.4.3 were not per owner, so
    # bob may have an e1 among 1.4.3's files: could not tell, until root took them over
    membership, _, note = resolve(facts(BOB, "e1"), [e1], frozenset(), legacy_eids=legacy)
    assert membership is Membership.UNKNOWN
    assert "genv 1.4.3" in note
    membership, _, note = resolve(facts(BOB, "e1"), [e1], frozenset())
    assert membership is Membership.IMPOSTOR
    assert note == "it claims environment e1 of uid 1000, which it does not own"
    # no claim at all, or an unreadable one, is not made a 1.4.3 claim
    assert resolve(facts(BOB, None), [], frozenset(), legacy_eids=legacy)[0] is Membership.NO_ENV
    assert resolve(facts(None, "e1"), [], frozenset(), legacy_eids=legacy)[2] == (
        "its environment variables could not be read")


# -- observed processes and observations ---------------------------------------------------


def test_memory_a_driver_does_not_report_counts_as_none():
    process = ObservedProcess(
        facts(ALICE, None),
        (Usage(1, None), Usage(0, 5), Usage(1, 7), Usage(0, 3)),
        Membership.NO_ENV,
    )
    assert process.devices == (0, 1)
    assert process.memory_on(0) == 8
    assert process.memory_on(1) == 7
    assert process.memory_on(2) == 0
    assert process.total_memory == 15
    assert process.eid is None
    assert process.pid == 4242


def test_an_observation_groups_attachments_and_members_by_owner_and_id():
    alice_e1, bob_e1 = env("e1", ALICE), env("e1", BOB)
    member = ObservedProcess(facts(ALICE, "e1"), (), Membership.IN_ENV, alice_e1)
    outsider = ObservedProcess(facts(BOB, "e1"), (), Membership.IMPOSTOR)
    observation = Observation(
        devices=(),
        processes=(member, outsider),
        environments=(alice_e1, bob_e1),
        attachments=(Attachment(0, "e1", ALICE, 1.0), Attachment(2, "e1", ALICE, 1.0),
                     Attachment(1, "e1", BOB, 1.0)),
    )
    assert observation.attached_indices(alice_e1) == {0, 2}
    assert observation.attached_indices(bob_e1) == {1}
    assert observation.members(alice_e1) == [member]
    assert observation.members(bob_e1) == []
    assert member.eid == "e1"


def test_a_gpu_snapshot_finds_a_device_by_index():
    devices = (Device(3, "GPU-3", "Simulated", 10), Device(1, "GPU-1", "Simulated", 10))
    snapshot = GpuSnapshot(devices, ())
    assert snapshot.device(1) is devices[1]
    assert snapshot.device(3) is devices[0]
    assert snapshot.device(0) is None
