"""The live view of every user (genv.domain.state.State): lookups, and which devices may be
held, where "unknown" never reads as "free"."""

from __future__ import annotations

from genv.domain.models import Attachment, Environment, RegisteredProcess
from genv.domain.state import UNKNOWN_HOLDER, State, StateProblem

ALICE, BOB, CAROL = 1000, 1001, 1002


def env(eid: str, uid: int, *pids: int, kernels: tuple[str, ...] = ()) -> Environment:
    return Environment(eid, uid, None, 1.0, processes=tuple(RegisteredProcess(p, 1) for p in pids),
                       kernel_ids=kernels)


def corrupt(uid: int) -> StateProblem:
    return StateProblem(f"/s/state-{uid}.json", uid, "is corrupt")


def unreadable(uid: int) -> StateProblem:  # permissions: others may read it, this reader not
    return StateProblem(f"/s/state-{uid}.json", uid, "cannot be read", hidden=True)


def failing(uid: int) -> StateProblem:  # an I/O error: nobody's fault
    return StateProblem(f"/s/state-{uid}.json", uid, "cannot be read (EIO)", owner_fault=False)


def test_a_problem_is_one_line_naming_the_file():
    assert corrupt(ALICE).line() == "state file /s/state-1000.json is corrupt"


def test_who_is_unknown_and_why():
    planted = StateProblem("/s/state-7.json", None, "was planted")
    state = State(problems=(corrupt(ALICE), unreadable(BOB), failing(CAROL), planted))
    assert state.unusable_uids == {ALICE, BOB, CAROL}
    assert state.hidden_uids == {BOB, CAROL}
    assert state.unknown_uids == {CAROL}
    assert state.problem_of(BOB) == unreadable(BOB)
    assert state.problem_of(4242) is None


def test_ids_are_unique_per_owner():
    alices, bobs, other = env("e1", ALICE, 10), env("e1", BOB, 11), env("e2", BOB, 12)
    state = State(environments=(alices, bobs, other))
    assert state.with_eid("e1") == [alices, bobs]
    assert state.with_eid("e3") == []
    assert state.lookup("e1", prefer_uid=BOB) is bobs
    assert state.lookup("e1", prefer_uid=ALICE) is alices
    assert state.lookup("e1") is None  # two have it: which one is not for genv to guess
    assert state.lookup("e1", prefer_uid=CAROL) is None
    assert state.lookup("e2") is other
    assert state.lookup("e2", prefer_uid=ALICE) is other
    assert state.lookup("e3") is None


def test_environments_by_process_and_by_kernel():
    a, b = env("a", ALICE, 10, 11, kernels=("k1",)), env("b", BOB, 11)
    state = State(environments=(a, b))
    assert state.find_by_pid(11) == [a, b]
    assert state.find_by_pid(10) == [a]
    assert state.find_by_pid(12) == []
    assert state.find_by_kernel("k1") == [a]
    assert state.find_by_kernel("k2") == []


def test_attachments_by_environment_and_by_device():
    alices, bobs = env("e1", ALICE, 10), env("e1", BOB, 11)
    on_2, on_0, bobs_0 = (Attachment(2, "e1", ALICE, 1.0), Attachment(0, "e1", ALICE, 2.0),
                          Attachment(0, "e1", BOB, 3.0))
    state = State(environments=(alices, bobs), attachments=(on_2, on_0, bobs_0))
    assert state.attachments_of(alices) == [on_2, on_0]
    assert state.attachments_of(bobs) == [bobs_0]
    assert state.attached_indices(alices) == [0, 2]
    assert state.attached_indices(env("e9", ALICE)) == []
    assert state.attachments_of(env("e9", ALICE)) == []
    assert state.attachments_on(0) == [on_0, bobs_0]
    assert state.attachments_on(1) == []
    # what a caller does with a list it got does not change the state
    state.attachments_of(alices).clear()
    state.attachments_on(0).clear()
    state.with_eid("e1").clear()
    assert state.attachments_of(alices) == [on_2, on_0]
    assert state.attachments_on(0) == [on_0, bobs_0]
    assert len(state.with_eid("e1")) == 2


def test_a_device_is_held_by_its_attachments_and_by_genv_143():
    mine = Attachment(0, "e1", ALICE, 1.0)
    legacy = Attachment(0, "old", BOB, 2.0)
    state = State(attachments=(mine,), legacy_held=(legacy, Attachment(1, "old", BOB, 2.0)))
    assert state.held_on(0) == [mine, legacy]
    assert state.held_on(2) == []


def test_a_user_whose_file_this_reader_cannot_see_may_hold_any_device():
    state = State(problems=(unreadable(BOB), failing(CAROL)))
    assert state.held_on(3) == [Attachment(3, UNKNOWN_HOLDER, BOB, 0.0),
                                Attachment(3, UNKNOWN_HOLDER, CAROL, 0.0)]


def test_a_corrupt_file_holds_nothing_for_anyone():
    assert State(problems=(corrupt(ALICE),)).held_on(0) == []


def test_what_root_published_counts_for_users_whose_file_cannot_be_used():
    held_0 = Attachment(0, "e1", ALICE, 5.0)
    held_1 = Attachment(1, "e2", BOB, 6.0)
    readable = Attachment(0, "e3", CAROL, 7.0)  # carol's file is fine: her own file counts
    state = State(
        problems=(corrupt(ALICE), unreadable(BOB)),
        holdings=(held_0, held_1, readable),
        holdings_published=True,
    )
    assert state.held_on(0) == [held_0]
    assert state.held_on(1) == [held_1]
    assert state.held_on(2) == []
    # not published: root said nothing, so what the reader cannot see may be anything
    unpublished = State(problems=(corrupt(ALICE), unreadable(BOB)), holdings=(held_0,))
    assert unpublished.held_on(0) == [Attachment(0, UNKNOWN_HOLDER, BOB, 0.0)]


def test_holdings_are_not_part_of_what_the_state_is():
    held = (Attachment(0, "e1", ALICE, 5.0),)
    assert State(holdings=held, holdings_published=True) == State()


def test_membership_tells_what_the_state_cannot():
    """Every reader of a state (the daemon, the nvidia-smi shim, monitor and top) resolves a
    process by this one call, with all the state cannot tell."""
    from genv.domain.observation import Membership, ProcessFacts

    def claiming(eid: str) -> ProcessFacts:
        return ProcessFacts(42, 1, 1000, "alice", "python", eid)

    mine = Environment("e1", 1000, "alice", 1.0)
    state = State(environments=(mine,), legacy_eids=frozenset({"old"}))
    assert state.membership(claiming("e1"), state.environments)[:2] == (Membership.IN_ENV, mine)
    assert state.membership(claiming("old"), state.environments)[0] is Membership.UNKNOWN
    assert state.membership(claiming("none"), state.environments)[0] is Membership.NO_ENV
