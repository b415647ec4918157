"""Which recorded environments are alive (genv.domain.liveness): a pure function of every
user's records and of two questions about the running system, asked here of fakes."""

from __future__ import annotations

from genv.domain.liveness import live_state
from genv.domain.models import (
    Attachment,
    Environment,
    RegisteredProcess,
    Revocation,
    UserRecords,
)
from genv.domain.state import State, StateProblem

ALICE, BOB = 1000, 1001
RUNNING = RegisteredProcess(100, 1)
EXITED = RegisteredProcess(101, 2)
BOBS = RegisteredProcess(102, 3)  # a process that runs as bob


class System:
    """Which processes run as whom and which kernels run; records every question."""

    def __init__(self, kernels: dict[int, set[str]] | None = None) -> None:
        self.kernels = kernels or {}
        self.asked: list[tuple[object, int]] = []
        self.kernel_questions: list[tuple[int, frozenset[str]]] = []

    def alive(self, process: RegisteredProcess, owner: int) -> bool:
        self.asked.append((process, owner))
        if process is BOBS:
            return owner == BOB
        return process is RUNNING

    def kernels_alive(self, uid: int, ids: frozenset[str]) -> set[str]:
        self.kernel_questions.append((uid, ids))
        return set(ids) & self.kernels.get(uid, set())


def env(eid: str, uid: int = ALICE, *processes: RegisteredProcess, kernels: tuple[str, ...] = (),
        creation: float = 1.0) -> Environment:
    return Environment(eid, uid, None, creation, processes=processes, kernel_ids=kernels)


def live(per_user: dict[int, UserRecords], system: System | None = None,
         problems: tuple[StateProblem, ...] = ()) -> State:
    system = system or System()
    return live_state(per_user, problems, system.alive, system.kernels_alive)


def test_an_environment_lives_while_one_of_its_processes_runs_as_its_owner():
    e1 = env("e1", ALICE, EXITED, RUNNING)
    gone = env("gone", ALICE, EXITED)
    system = System()
    state = live({ALICE: UserRecords(ALICE, (e1, gone))}, system)
    [alive] = state.environments
    assert (alive.eid, alive.processes) == ("e1", (RUNNING,))  # the exited one is dropped
    assert (EXITED, ALICE) in system.asked and (RUNNING, ALICE) in system.asked


def test_another_users_process_keeps_nothing_alive():
    state = live({ALICE: UserRecords(ALICE, (env("e1", ALICE, BOBS),)),
                  BOB: UserRecords(BOB, (env("e1", BOB, BOBS),))})
    assert [(e.uid, e.eid) for e in state.environments] == [(BOB, "e1")]


def test_an_environment_lives_while_one_of_its_kernels_runs():
    k_env = env("k", ALICE, kernels=("k1", "k2"))
    other = env("o", ALICE, kernels=("k3",))
    plain = env("p", BOB, RUNNING)
    system = System(kernels={ALICE: {"k2"}})
    state = live({ALICE: UserRecords(ALICE, (k_env, other)), BOB: UserRecords(BOB, (plain,))},
                 system)
    assert [(e.eid, e.kernel_ids) for e in state.environments] == [("k", ("k2",)), ("p", ())]
    # one question per user that has kernels, for all of their kernels at once
    assert system.kernel_questions == [(ALICE, frozenset({"k1", "k2", "k3"}))]


def test_a_kernel_of_another_user_keeps_nothing_alive():
    system = System(kernels={BOB: {"k1"}})
    state = live({ALICE: UserRecords(ALICE, (env("k", ALICE, kernels=("k1",)),))}, system)
    assert state.environments == ()


def test_an_unchanged_environment_is_kept_as_it_is():
    e1 = env("e1", ALICE, RUNNING)
    k = env("k", ALICE, RUNNING, kernels=("k1",))
    state = live({ALICE: UserRecords(ALICE, (e1, k))}, System(kernels={ALICE: {"k1"}}))
    assert state.environments[0] is e1
    assert state.environments[1] is k
    # only a kernel ended: the environment lives on with its process, without the kernel
    state = live({ALICE: UserRecords(ALICE, (k,))}, System())
    assert [(e.processes, e.kernel_ids) for e in state.environments] == [((RUNNING,), ())]


def test_attachments_of_live_environments_only_by_owner_and_id():
    alices = env("e1", ALICE, RUNNING)
    bobs = env("e1", BOB, EXITED)
    state = live({
        ALICE: UserRecords(ALICE, (alices,), (Attachment(0, "e1", ALICE, 5.0),)),
        BOB: UserRecords(BOB, (bobs,), (Attachment(1, "e1", BOB, 5.0),)),
    })
    assert state.attachments == (Attachment(0, "e1", ALICE, 5.0),)


def test_roots_revocations_take_back_environments_and_attachments():
    e1 = env("e1", ALICE, RUNNING, creation=10.0)
    e2 = env("e2", ALICE, RUNNING, creation=20.0)
    attachments = (Attachment(0, "e2", ALICE, 30.0), Attachment(1, "e2", ALICE, 31.0),
                   Attachment(2, "e2", ALICE, 32.0))
    root = UserRecords(0, revocations=(
        Revocation(ALICE, "e1", None, 10.0),  # the whole environment
        Revocation(ALICE, "e2", 1, 31.0),  # one attachment
        Revocation(ALICE, "e2", 2, 1.0),  # an earlier attachment to 2: not this one
    ))
    state = live({0: root, ALICE: UserRecords(ALICE, (e1, e2), attachments)})
    assert [e.eid for e in state.environments] == ["e2"]
    assert [a.device_index for a in state.attachments] == [0, 2]


def test_a_revocation_does_not_take_back_what_was_made_again_later():
    again = env("e1", ALICE, RUNNING, creation=50.0)
    root = UserRecords(0, revocations=(Revocation(ALICE, "e1", None, 10.0),
                                       Revocation(ALICE, "e1", 0, 10.0)))
    state = live({0: root, ALICE: UserRecords(ALICE, (again,), (Attachment(0, "e1", ALICE,
                                                                           60.0),))})
    assert [e.eid for e in state.environments] == ["e1"]
    assert [a.device_index for a in state.attachments] == [0]


def test_only_roots_file_revokes():
    e1 = env("e1", ALICE, RUNNING, creation=10.0)
    bob = UserRecords(BOB, revocations=(Revocation(ALICE, "e1", None, 10.0),))
    state = live({BOB: bob, ALICE: UserRecords(ALICE, (e1,))})
    assert [e.eid for e in state.environments] == ["e1"]


def test_problems_and_roots_holdings_pass_through():
    problem = StateProblem("/x/state-1001.json", BOB, "is corrupt")
    held = (Attachment(3, "e9", BOB, 1.0),)
    root = UserRecords(0, holdings=held, holdings_published=True)
    state = live({0: root}, problems=(problem,))
    assert state.problems == (problem,)
    assert (state.holdings, state.holdings_published) == (held, True)
    nobody = live({ALICE: UserRecords(ALICE)})
    assert (nobody.holdings, nobody.holdings_published, nobody.problems) == ((), False, ())
