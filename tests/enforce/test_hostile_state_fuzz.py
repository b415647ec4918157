"""Property: whatever bob puts in his own state file (or under his file's name, or under a
name of alice's), real Enforcer cycles go on: no exception escapes, no cycle is lost, and
alice's records and the enforcement of her environment are intact.

In-process, with a real Store on a folder of root's (files chowned to their owners, as root
does), real processes of the two real users, and the daemon's own wiring (a ProcessWatcher,
root's published holdings). Processes are not signalled, so that every example sees the same
machine: the plan of each cycle is what is checked.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genv.domain.models import (
    Attachment,
    Device,
    Environment,
    GpuProcess,
    GpuSnapshot,
    RegisteredProcess,
)
from genv.enforce.daemon import Enforcer
from genv.enforce.executor import Detacher, Terminator
from genv.enforce.observe import Observer
from genv.enforce.report import Reporter
from genv.enforce.rules import RuleConfig
from genv.store import Store
from genv.system.kernels import KernelTracker
from genv.system.watch import ProcessWatcher

from support import encode_records, start_of, wait_environ

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (real users)")

GIB = 1 << 30


class FixedMachine:
    """Two devices; the GPU processes the test placed."""

    name = "fixed"

    def __init__(self, placements: list[tuple[int, int]]) -> None:
        self.view = GpuSnapshot(
            tuple(Device(i, f"GPU-{i}", "fake", 80 * GIB, 0) for i in (0, 1)),
            tuple(GpuProcess(pid, d, f"GPU-{d}", GIB) for pid, d in placements),
        )

    def snapshot(self, processes: bool = True) -> GpuSnapshot:
        return self.view

    def close(self) -> None:
        pass


class World:
    def __init__(self, state, store, enforcer, alice, bob, processes, alices_file) -> None:
        self.state = state
        self.store = store
        self.enforcer = enforcer
        self.alice = alice
        self.bob = bob
        self.processes = processes
        self.alices_file = alices_file

    def bobs_names(self) -> list[str]:
        return [f"state-{self.bob.uid}.json", f"state-{self.bob.uid}~1.json",
                f"state-{self.alice.uid}~1.json"]

    def clear_bob(self) -> None:
        for name in self.bobs_names():
            path = self.state / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif os.path.lexists(path):
                path.unlink()


@pytest.fixture
def world(shared_dir, procs, alice, bob):
    state = shared_dir / "state"
    state.mkdir(mode=0o1777)
    state.chmod(0o1777)
    setup = Store(state)
    alice_shell = procs.start(user=alice, eid="ae")
    with setup.transaction(uid=alice.uid) as tx:
        tx.activate("ae", pid=alice_shell.pid)
        tx.attach("ae", 0)
    alice_ok = procs.start(user=alice, eid="ae")
    alice_off = procs.start(user=alice, eid="ae")  # on device 1, not attached to ae
    bobs = procs.start(user=bob, eid="be")
    for process in (alice_ok, alice_off, bobs):
        wait_environ(process.pid)
    watcher = ProcessWatcher()
    store = Store(state, alive=watcher.runs_as, kernels_alive=KernelTracker(watcher.is_running))
    machine = FixedMachine([(alice_ok.pid, 0), (alice_off.pid, 1), (bobs.pid, 1)])
    enforcer = Enforcer(
        Observer(machine, store, watcher),
        RuleConfig(non_env_processes=True, max_devices_per_user=1,
                   max_memory_per_user="100g"),
        Terminator(grace=1, dry_run=True),
        Detacher(store, dry_run=True),
        Reporter(stream=open(os.devnull, "w")),  # noqa: SIM115
    )
    enforcer.dry_run = False  # root publishes who holds what, as a real daemon does
    processes = {"alice_shell": alice_shell, "alice_ok": alice_ok, "alice_off": alice_off,
                 "bobs": bobs}
    yield World(state, store, enforcer, alice, bob, processes,
                state / f"state-{alice.uid}.json")
    enforcer.reporter.sinks[0].stream.close()
    watcher.close()


def valid_bob_document(world: World) -> dict:
    bob, bobs = world.bob, world.processes["bobs"]
    env = Environment("be", bob.uid, bob.name, 1.0,
                      processes=(RegisteredProcess(bobs.pid, start_of(bobs.pid)),))
    return json.loads(encode_records(bob.uid, [env], [Attachment(1, "be", bob.uid, 2.0)]))


_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_fields = st.sampled_from(["version", "uid", "boot_id", "environments", "attachments",
                           "revoked", "holdings", "eid", "creation", "config", "processes",
                           "kernel_ids", "username", "device", "time", "gpu_memory"])


@st.composite
def bob_contents(draw: st.DrawFn) -> tuple[str, object]:
    """What bob leaves under his name: (kind, content)."""
    kind = draw(st.sampled_from(["bytes", "mutated", "deep", "huge", "mode", "other",
                                 "planted"]))
    if kind == "bytes":
        return kind, draw(st.binary(max_size=600))
    if kind == "mutated":
        changes = draw(st.lists(st.tuples(st.sampled_from(["top", "env", "attachment"]),
                                          _fields, _json), min_size=1, max_size=4))
        return kind, changes
    if kind == "deep":
        return kind, draw(st.integers(min_value=50, max_value=100_000))
    if kind == "huge":
        return kind, draw(st.integers(min_value=(1 << 20) + 1, max_value=200 << 20))
    if kind == "mode":
        return kind, draw(st.sampled_from([0o000, 0o200, 0o666, 0o755, 0o622]))
    if kind == "other":
        return kind, draw(st.sampled_from(["fifo", "folder", "link-to-alice", "link-dangling"]))
    return kind, draw(st.sampled_from(["alice-uid-in-own-file", "under-alices-name"]))


def leave(world: World, kind: str, content) -> None:  # noqa: ANN001
    """Put bob's content in place, as root, owned by bob."""
    bob = world.bob
    path = world.state / f"state-{bob.uid}.json"
    data: bytes | None = None
    if kind == "bytes":
        data = content
    elif kind == "mutated":
        document = valid_bob_document(world)
        for where, field, value in content:
            if where == "top":
                document[field] = value
                continue
            items = document.get("environments" if where == "env" else "attachments")
            if isinstance(items, list) and items and isinstance(items[0], dict):
                items[0][field] = value  # (unless an earlier change replaced the list)
        data = json.dumps(document).encode()
    elif kind == "deep":
        data = b"[" * content + b"]" * content
    elif kind == "huge":
        data = b""
    elif kind == "mode":
        data = json.dumps(valid_bob_document(world)).encode()
    elif kind == "planted":
        document = valid_bob_document(world)
        document["uid"] = world.alice.uid
        data = json.dumps(document).encode()
        if content == "under-alices-name":
            path = world.state / f"state-{world.alice.uid}~1.json"
    if data is not None:
        path.write_bytes(data)
        os.chown(path, bob.uid, bob.gid)
        if kind == "huge":
            os.truncate(path, content)
        os.chmod(path, content if kind == "mode" else 0o644)
        return
    if content == "fifo":
        os.mkfifo(path, 0o644)
    elif content == "folder":
        path.mkdir()
        (path / "x").write_text("{}")
    elif content == "link-to-alice":
        os.symlink(world.alices_file, path)
    else:
        os.symlink(world.state / "nowhere", path)
    os.lchown(path, bob.uid, bob.gid)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(content=bob_contents())
def test_no_content_of_bobs_file_escapes_a_cycle_or_touches_alice(world, content):
    alices_bytes = world.alices_file.read_bytes()
    world.clear_bob()
    leave(world, *content)

    for _ in range(2):  # the first cycle after the change, and the next (cached) one
        plan = world.enforcer.cycle()

        assert plan is not None  # no cycle lost
        state = world.store.read()
        envs = {(env.uid, env.eid) for env in state.environments}
        assert (world.alice.uid, "ae") in envs
        assert (0, "ae", world.alice.uid) in {(a.device_index, a.eid, a.uid)
                                              for a in state.attachments}
        terminated = {t.process.pid for t in plan.terminations}
        assert world.processes["alice_off"].pid in terminated  # her rules still run
        assert world.processes["alice_ok"].pid not in terminated
        assert not {d for d in plan.detachments if d.uid == world.alice.uid}
    assert world.alices_file.read_bytes() == alices_bytes  # nobody wrote her file
