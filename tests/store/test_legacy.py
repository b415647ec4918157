"""Reading genv 1.4.3's files (genv.store.legacy): claims from a folder anyone writes to,
so whatever the bytes, nothing raises, bad entries are left out with a note, and the good
ones still count."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genv.store import legacy


@pytest.fixture
def folder(tmp_path: Path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield tmp_path, fd
    os.close(fd)


GOOD = {"eid": "e1", "uid": 1000, "creation": "01/12/2026 11:49:40", "username": "alice",
        "config": {"name": "x", "gpu_memory": "4g", "gpus": 1}, "pids": [4242],
        "kernel_ids": ["abc-1"]}


def test_a_bad_entry_hides_no_other(folder) -> None:
    path, fd = folder
    bad = [{"eid": "has space"}, {"eid": "e2", "uid": "1000"}, {"eid": "e3", "pids": [10**30]},
           {"eid": "e4", "config": {"gpu_memory": "lots"}}, "text", None]
    (path / "envs.json").write_text(json.dumps({"envs": [*bad, GOOD, dict(GOOD)]}))
    (path / "devices.json").write_text(json.dumps({"devices": [
        {"index": 0, "total_memory": "80gi", "attachments": [
            {"eid": "e1", "gpu_memory": "4g", "time": "01/12/2026 11:49:40"},
            {"eid": "bad id!", "gpu_memory": None, "time": "x"}]},
        {"index": -1, "attachments": []}, {"index": True}]}))
    found = legacy.read(fd)
    assert [env.eid for env in found.environments] == ["e1"]
    env = found.environments[0]
    assert (env.claimed_uid, env.username, env.pids, env.kernel_ids) == (
        1000, "alice", (4242,), ("abc-1",))
    assert env.config.gpu_memory == "4g" and env.creation is not None
    assert [(a.device_index, a.eid) for a in found.attachments] == [(0, "e1")]
    assert len(found.notes) >= 8 and all("\n" not in note for note in found.notes)
    assert legacy.pending(fd) and found.eids == {"e1"}


def test_an_attachment_with_a_unit_no_one_has_is_left_out(folder) -> None:
    """A memory unit spelled with a dotless i ("1kı") matched the unit pattern under Unicode
    case-folding and raised KeyError: one user's devices.json stopped every reader."""
    path, fd = folder
    (path / "devices.json").write_text(json.dumps({"devices": [
        {"_key": "\u0663", "attachments": [{"eid": "e9", "gpu_memory": "1g"}]},
        {"index": 0, "attachments": [{"eid": "e1", "gpu_memory": "1k\u0131"},
                                     {"eid": "e2", "gpu_memory": "4g"}]}]}))
    found = legacy.read(fd)
    assert [(a.device_index, a.eid) for a in found.attachments] == [(0, "e2")]
    assert any("e1" not in note and "left out" in note for note in found.notes)


def test_the_form_before_0_9_is_read(folder) -> None:
    path, fd = folder
    (path / "envs.json").write_text(json.dumps({"envs": {"e1": dict(GOOD)}}))
    attachment = {"eid": "e1", "attached": "01/12/2026 11:49:40"}
    (path / "devices.json").write_text(json.dumps({"devices": {"1": {
        "total_memory": "80gi", "eids": {"e1": attachment}}}}))
    found = legacy.read(fd)
    assert [env.eid for env in found.environments] == ["e1"]
    assert [(a.device_index, a.eid) for a in found.attachments] == [(1, "e1")]


def test_links_fifos_and_huge_files_are_not_followed(folder) -> None:
    path, fd = folder
    (path / "envs.json").symlink_to("/etc/passwd")
    os.mkfifo(path / "devices.json")
    found = legacy.read(fd)
    assert found.environments == () and found.attachments == ()
    assert len(found.notes) == 2


def test_only_roots_marker_counts(folder) -> None:
    path, fd = folder
    (path / "envs.json").write_text("{}")
    (path / legacy.MARKER).write_text("")
    os.chown(path / legacy.MARKER, 12345, -1) if os.geteuid() == 0 else None
    assert legacy.pending(fd) is (os.geteuid() == 0)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=5),
    max_leaves=30).map(lambda value: json.dumps({"envs": value, "devices": value}).encode()))
def test_nothing_raises_whatever_the_bytes(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("legacy")
    (path / "envs.json").write_bytes(data)
    (path / "devices.json").write_bytes(b"[" * 100000)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        legacy.read(fd)
    finally:
        os.close(fd)


def test_files_of_1_4_3_that_appear_after_root_opened_the_folder_never_count(tmp_path):
    """A folder root opened with nothing of genv 1.4.3 in it is marked at once: an envs.json
    a user writes later is not 1.4.3's state (it would make their processes "could not
    tell", out of reach of every rule)."""
    from genv.store import Store

    if os.geteuid() != 0:
        pytest.skip("root marks the folder")
    root = tmp_path / "state"
    with Store(root=root, caller_uid=0) as store:
        store.read()
    (root / "envs.json").write_text('{"envs": [{"eid": "x", "kernel_ids": ["k"]}]}')
    with Store(root=root, caller_uid=0) as store:
        assert not store.legacy_pending()
        assert "x" not in store.read().legacy_eids
