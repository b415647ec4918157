"""The on-disk form of one user's state: round trip, version check, and refusing bad input."""

from __future__ import annotations

import json

import pytest

from genv.domain.models import Attachment, EnvConfig, Environment, RegisteredProcess
from genv.store import records

UID = 1234


def sample() -> tuple[list[Environment], list[Attachment]]:
    environments = [
        Environment(
            eid="e1",
            uid=UID,
            username="alice",
            creation=1700000000.25,
            config=EnvConfig(name="train", gpus=2, gpu_memory="4g"),
            processes=(RegisteredProcess(100, 1699999999.5), RegisteredProcess(101, None)),
            kernel_ids=("k-1",),
        ),
        Environment(eid="e2", uid=UID, username=None, creation=1700000001.0),
    ]
    attachments = [
        Attachment(0, "e1", UID, 1700000002.0, "4g", False, "GPU-0"),
        Attachment(1, "e1", UID, 1700000002.5, None, True, None),
    ]
    return environments, attachments


def document(**changes: object) -> dict:
    data = json.loads(records.encode(UID, *sample()))
    data.update(changes)
    return data


def decode(data: object, uid: int = UID) -> tuple[list[Environment], list[Attachment]]:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return records.decode(raw, uid)


def test_round_trip_keeps_everything() -> None:
    environments, attachments = sample()
    assert decode(records.encode(UID, environments, attachments)) == (environments, attachments)


def test_encoding_is_versioned_json_naming_its_uid() -> None:
    data = json.loads(records.encode(UID, *sample()))
    assert data["version"] == records.FORMAT_VERSION
    assert data["uid"] == UID
    assert [env["eid"] for env in data["environments"]] == ["e1", "e2"]


def test_empty_state_round_trips() -> None:
    assert decode(records.encode(UID, [], [])) == ([], [])


def test_owner_comes_from_the_caller_not_the_text() -> None:
    with pytest.raises(records.RecordError, match="uid"):
        decode(document(), uid=UID + 1)


@pytest.mark.parametrize("version", [None, 0, "1", 1.5, [1]])
def test_unknown_version_is_refused(version: object) -> None:
    data = document(version=version)
    if version is None:
        del data["version"]
    with pytest.raises(records.RecordError, match="version"):
        decode(data)


def test_newer_version_says_to_upgrade() -> None:
    with pytest.raises(records.RecordError, match="upgrade"):
        decode(document(version=records.FORMAT_VERSION + 1))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b'{"version": 1, "uid": 1234, "environments": [',
        b"\xff\xfe\x00garbage\x81",
        b"[]",
        b"null",
        b"42",
        b"[" * 100000 + b"]" * 100000,
    ],
    ids=["empty", "brace", "truncated", "garbage", "list", "null", "number", "deep"],
)
def test_bad_bytes_raise_record_error(raw: bytes) -> None:
    with pytest.raises(records.RecordError):
        records.decode(raw, UID)


def _mutations() -> list[tuple[str, dict]]:
    cases = []
    for key in ("environments", "attachments"):
        cases.append((f"no {key}", {key: None}))
        cases.append((f"{key} not a list", {key: 7}))
        cases.append((f"{key} of text", {key: ["x"]}))
    env = document()["environments"][0]
    att = document()["attachments"][0]
    for field_name, value in [("eid", 5), ("eid", None), ("creation", "soon"),
                              ("creation", float("nan")), ("creation", 1e400),
                              ("processes", [[1]]), ("processes", [["x", 1.0]]),
                              ("processes", [[1, "x"]]), ("kernel_ids", [3]),
                              ("config", {"gpus": "many"}), ("config", {"name": 3})]:
        changed = {"environments": [{**env, field_name: value}]}
        cases.append((f"env {field_name}={value!r}", changed))
    for field_name, value in [("device", "zero"), ("device", 1e400), ("eid", None),
                              ("time", None), ("time", float("inf")), ("gpu_memory", 4)]:
        cases.append((f"attachment {field_name}={value!r}",
                       {"attachments": [{**att, field_name: value}]}))
    return cases


@pytest.mark.parametrize("changes", [c for _, c in _mutations()], ids=[n for n, _ in _mutations()])
def test_malformed_records_raise_record_error(changes: dict) -> None:
    # json.dumps writes NaN and Infinity, which json.loads reads back: both must be refused.
    with pytest.raises(records.RecordError):
        decode(document(**changes))


def test_record_error_is_one_line() -> None:
    for raw in (b"\xff", b'{"version": 1, "uid": 1234, "environments": [', b"[" * 5000):
        with pytest.raises(records.RecordError) as caught:
            records.decode(raw, UID)
        assert "\n" not in str(caught.value)
