"""The on-disk form of one user's records: round trip, versions, limits, refusing bad input.

Whatever bytes a user puts in their own file, decoding raises RecordError (the file is bad)
and nothing else; a property-based test throws arbitrary documents at it.
"""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genv.domain.models import (
    Attachment,
    EnvConfig,
    Environment,
    RegisteredProcess,
    Revocation,
    UserRecords,
)
from genv.store import codec

UID = 1234
BOOT = "boot-a"


def sample() -> UserRecords:
    return UserRecords(
        uid=UID,
        environments=(
            Environment(
                eid="e1",
                uid=UID,
                username="alice",
                creation=1700000000.25,
                config=EnvConfig(name="train run", gpus=2, gpu_memory="4g"),
                processes=(RegisteredProcess(100, 12345), RegisteredProcess(101, None)),
                kernel_ids=("k-1",),
            ),
            Environment(eid="e2", uid=UID, username=None, creation=1700000001.0),
        ),
        attachments=(
            Attachment(0, "e1", UID, 1700000002.0, "4g", False, "GPU-0"),
            Attachment(1, "e1", UID, 1700000002.5, None, True, None),
        ),
    )


def document(**changes: object) -> dict:
    data = json.loads(codec.encode(sample(), BOOT))
    data.update(changes)
    return data


def decode(data: object, uid: int = UID, boot: str = BOOT) -> UserRecords:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return codec.decode(raw, uid, boot)


def test_round_trip_keeps_everything() -> None:
    assert decode(codec.encode(sample(), BOOT)) == sample()


def test_roots_revocations_and_holdings_round_trip() -> None:
    records = UserRecords(
        0,
        revocations=(Revocation(5, "e", 1, 2.0), Revocation(5, "f", None, 3.0)),
        holdings=(Attachment(2, "e", 5, 4.0, "1g", True),),
        holdings_published=True,
    )
    assert decode(codec.encode(records, BOOT), uid=0) == records


def test_only_roots_file_may_revoke() -> None:
    data = document(revoked=[[0, "e", 1, 2.0]])
    assert decode(data).revocations == ()


def test_encoding_is_versioned_json_naming_its_uid_and_boot() -> None:
    data = json.loads(codec.encode(sample(), BOOT))
    assert (data["version"], data["uid"], data["boot_id"]) == (codec.FORMAT_VERSION, UID, BOOT)


def test_processes_of_another_boot_are_gone() -> None:
    records = decode(codec.encode(sample(), BOOT), boot="boot-b")
    assert [p.start for p in records.environments[0].processes] == [None, None]


def test_format_1_is_read_through_the_legacy_start() -> None:
    legacy = {
        "version": 1,
        "uid": UID,
        "environments": [
            {"eid": "e1", "username": None, "creation": 5.0, "config": {},
             "processes": [[100, 1700000000.5], [101, None]], "kernel_ids": []}
        ],
        "attachments": [],
    }
    seen = []

    def legacy_start(pid: int, wall: float) -> int | None:
        seen.append((pid, wall))
        return 777

    records = codec.decode(json.dumps(legacy).encode(), UID, BOOT, legacy_start)
    assert [(p.pid, p.start) for p in records.environments[0].processes] == [(100, 777),
                                                                              (101, None)]
    assert seen == [(100, 1700000000.5)]


def test_owner_comes_from_the_caller_not_the_text() -> None:
    with pytest.raises(codec.RecordError, match="uid"):
        decode(document(), uid=UID + 1)


@pytest.mark.parametrize("version", [None, 0, "2", 1.5, [2]])
def test_unknown_version_is_refused(version: object) -> None:
    data = document(version=version)
    if version is None:
        del data["version"]
    with pytest.raises(codec.RecordError, match="version"):
        decode(data)


def test_newer_version_says_to_upgrade() -> None:
    with pytest.raises(codec.RecordError, match="upgrade"):
        decode(document(version=codec.FORMAT_VERSION + 1))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b'{"version": 2, "uid": 1234, "environments": [',
        b"\xff\xfe\x00garbage\x81",
        b"[]",
        b"null",
        b"42",
        b"[" * 100000 + b"]" * 100000,
        b'{"version": 2, "version": 2}',
        b'{"version": ' + b"9" * 5000 + b"}",
        b'{"version": NaN}',
        b" " * (codec.MAX_FILE_BYTES + 1),
    ],
    ids=["empty", "brace", "truncated", "garbage", "list", "null", "number", "deep",
         "duplicate-key", "huge-number", "nan", "too-big"],
)
def test_bad_bytes_raise_record_error(raw: bytes) -> None:
    with pytest.raises(codec.RecordError):
        codec.decode(raw, UID, BOOT)


def _mutations() -> list[tuple[str, dict]]:
    cases = []
    for key in ("environments", "attachments"):
        cases.append((f"no {key}", {key: None}))
        cases.append((f"{key} not a list", {key: 7}))
        cases.append((f"{key} of text", {key: ["x"]}))
    env = document()["environments"][0]
    att = document()["attachments"][0]
    for field_name, value in [
        ("eid", 5), ("eid", None), ("eid", "a,b"), ("eid", "a\nb"), ("eid", "x" * 500),
        ("creation", "soon"), ("creation", float("nan")), ("creation", 1e400),
        ("creation", -1), ("creation", 1e30),
        ("processes", [[1]]), ("processes", [["x", 1]]), ("processes", [[1, "x"]]),
        ("processes", [[0, 1]]), ("processes", [[2**40, 1]]), ("processes", [[True, 1]]),
        ("processes", [[5, 1], [5, 2]]), ("processes", [[5, -1]]), ("processes", [[5, 2**70]]),
        ("processes", [[5, 1]] * (codec.MAX_PROCESSES_PER_ENV + 1)),
        ("kernel_ids", [3]), ("kernel_ids", ["a b"]), ("kernel_ids", ["k", "k"]),
        ("config", {"gpus": "many"}), ("config", {"gpus": -1}), ("config", {"gpus": 10**9}),
        ("config", {"name": 3}), ("config", {"name": "a\x1b[31m"}), ("config", {"name": "a,b"}),
        ("config", {"gpu_memory": "lots"}), ("config", {"gpu_memory": 4}),
        ("config", {"gpu_memory": "9" * 30 + "gi"}), ("username", "a\nb"),
    ]:
        changed = {"environments": [{**env, field_name: value}]}
        cases.append((f"env {field_name}={str(value)[:30]!r}", changed))
    for field_name, value in [("device", "zero"), ("device", 1e400), ("device", -1),
                              ("device", 5000), ("eid", None), ("eid", "other"),
                              ("time", None), ("time", float("inf")), ("gpu_memory", 4),
                              ("over_subscribed", "yes"), ("uuid", "GPU\n1")]:
        cases.append((f"attachment {field_name}={value!r}",
                       {"attachments": [{**att, field_name: value}]}))
    cases.append(("environment twice", {"environments": [env, env], "attachments": []}))
    cases.append(("attachment twice", {"attachments": [att, att]}))
    cases.append(("too many environments",
                  {"environments": [{**env, "eid": f"e{i}"}
                                    for i in range(codec.MAX_ENVIRONMENTS + 1)],
                   "attachments": []}))
    return cases


@pytest.mark.parametrize("changes", [c for _, c in _mutations()], ids=[n for n, _ in _mutations()])
def test_malformed_records_raise_record_error(changes: dict) -> None:
    # json.dumps writes NaN and Infinity, which json.loads reads back: both must be refused.
    with pytest.raises(codec.RecordError):
        decode(document(**changes))


def test_record_error_is_one_line() -> None:
    for raw in (b"\xff", b'{"version": 2, "uid": 1234, "environments": [', b"[" * 5000,
                json.dumps(document(environments=[{"eid": "a\nb"}])).encode()):
        with pytest.raises(codec.RecordError) as caught:
            codec.decode(raw, UID, BOOT)
        assert "\n" not in str(caught.value)


# -- fuzzing ---------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)
_keys = st.sampled_from(["eid", "creation", "config", "processes", "kernel_ids", "username",
                         "device", "time", "gpu_memory", "over_subscribed", "uuid", "name",
                         "gpus"])


@st.composite
def documents(draw: st.DrawFn) -> dict:
    """Near-valid documents: a real one with some fields replaced by anything."""
    data = document()
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["environments", "attachments", "top"]))
        key = draw(_keys)
        value = draw(_json)
        if where == "top":
            data[draw(st.sampled_from(["version", "uid", "boot_id", "environments",
                                       "attachments", key]))] = value
        elif isinstance(data.get(where), list) and isinstance(data[where][:1] or None, list) \
                and isinstance(data[where][0], dict):
            item = dict(data[where][0])
            item[key] = value
            data[where] = [item, *data[where][1:]]
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_any_document_decodes_or_is_bad(data: dict) -> None:
    try:
        records = decode(data)
    except codec.RecordError as error:
        assert "\n" not in str(error)
        return
    # What was accepted is what genv could have written: it survives a round trip.
    assert decode(codec.encode(records, BOOT)) == records


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_decode_or_are_bad(raw: bytes) -> None:
    with contextlib.suppress(codec.RecordError):
        codec.decode(raw, UID, BOOT)


def test_roots_file_has_room_for_every_users_holdings_and_revocations():
    """Root's file says what every user holds and what was revoked from whom: one user's
    1 MiB must not be able to make it too big to read (and so lose every revocation)."""
    holdings = tuple(Attachment(i % 1024, f"e{'x' * 100}{i}", 1000 + i % 50, 1.5, None)
                     for i in range(20000))
    data = codec.encode(UserRecords(0, holdings=holdings, holdings_published=True), BOOT)
    assert len(data) > codec.MAX_FILE_BYTES
    assert codec.decode(data, 0, BOOT).holdings == holdings
    with pytest.raises(codec.RecordError):
        codec.decode(data, UID, BOOT)  # a user's file stays within its 1 MiB
