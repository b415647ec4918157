"""genv 1.4.3's state in the state folder, read as claims, with limits.

genv 1.4.3 kept ``envs.json`` (environments: id, uid, user name, creation, configuration,
pids, Jupyter kernel ids), ``devices.json`` (devices and the environments attached to each)
and ``genv.lock`` in the same folder, all writable by everyone. So nothing in them is a fact:
any user may have written any of it. They are read here only so that root can take them over
(genv.core.migrate), and so that, until it has, a process claiming an environment they name
is "could not tell" rather than "in no environment".

Reading is bounded like genv.store.codec: size, counts, lengths, characters, digits; an
entry that breaks a rule is left out with a note, so that one bad entry cannot hide everyone else's
environments. Nothing here raises on any bytes.

Once root has taken the files over it writes ``.genv-1.4.3-taken-over`` (root's, so no user
can fake it) and keeps the old files aside under ``NAME.1.4.3-<time>``; files of 1.4.3's names
that appear after that are nobody's claim any more.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from genv.domain import constants, validate
from genv.domain.models import EnvConfig
from genv.store import safefs
from genv.store.codec import RecordError
from genv.store.legacy_files import (  # noqa: F401 - part of this module's interface
    BACKUP_SUFFIX,
    FILES,
    LOCK,
    MARKER,
    keep_aside,
    mark,
    pending,
    present,
    taken_over,
)

ENVS, DEVICES = FILES
TIME_FORMAT = "%d/%m/%Y %H:%M:%S"  # how 1.4.3 wrote times (local time)

MAX_BYTES = 8 << 20
MAX_ENVIRONMENTS = 4096
MAX_PIDS = 1024
MAX_KERNELS = 64
MAX_DEVICES = 1024
MAX_ATTACHMENTS = 4096
MAX_NOTES = 50


@dataclass(frozen=True)
class LegacyEnv:
    """One environment as ``envs.json`` claims it."""

    eid: str
    claimed_uid: int | None
    username: str | None
    creation: float | None
    config: EnvConfig
    pids: tuple[int, ...] = ()
    kernel_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class LegacyAttachment:
    """One attachment as ``devices.json`` claims it."""

    device_index: int
    eid: str
    gpu_memory: str | None
    time: float | None


@dataclass(frozen=True)
class LegacyState:
    environments: tuple[LegacyEnv, ...] = ()
    attachments: tuple[LegacyAttachment, ...] = ()
    # what could not be used, one line each (at most MAX_NOTES)
    notes: tuple[str, ...] = ()
    # when envs.json was last written: every pid it lists was alive then (1.4.3 dropped the
    # others on each write), so a process that started later reuses a pid it never meant
    envs_written: float | None = None
    files: tuple[str, ...] = field(default=())

    @property
    def eids(self) -> frozenset[str]:
        return frozenset(env.eid for env in self.environments)


def read(dir_fd: int) -> LegacyState:
    """Everything 1.4.3's files claim that is well-formed."""
    notes: list[str] = []
    files = present(dir_fd)
    envs_document, envs_written = _load(dir_fd, ENVS, notes)
    devices_document, _ = _load(dir_fd, DEVICES, notes)
    environments = _environments(envs_document, notes)
    attachments = _attachments(devices_document, notes)
    return LegacyState(environments, attachments, tuple(notes[:MAX_NOTES]), envs_written, files)


# -- decoding ---------------------------------------------------------------------------------


def _load(dir_fd: int, name: str, notes: list[str]) -> tuple[Any, float | None]:
    try:
        found = safefs.read_file(dir_fd, name, MAX_BYTES)
    except OverflowError:
        notes.append(f"{name} is larger than {MAX_BYTES} bytes")
        return None, None
    except OSError as error:
        if error.errno not in (errno.ENOENT,):
            notes.append(f"{name} cannot be read ({error.strerror or error})")
        return None, None
    if found is None:
        return None, None
    data, info = found
    if not data.strip():
        return None, info.st_mtime
    try:
        return _parse(data), info.st_mtime
    except RecordError as error:
        notes.append(f"{name} is not usable: {error}")
        return None, info.st_mtime


class _TooLong:
    """A number of too many digits: a value no entry accepts (the entry is left out alone)."""

    def __repr__(self) -> str:
        return "a number of too many digits"


def _parse(data: bytes) -> Any:
    import json

    def number(text: str) -> Any:
        return (
            _TooLong()
            if len(text) > 40
            else (float(text) if "." in text or "e" in text.lower() else int(text))
        )

    try:
        return json.loads(data, parse_int=number, parse_float=number)
    except RecursionError:
        raise RecordError("nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise RecordError(f"not valid JSON ({validate.safe_text(str(error), 80)})") from None


def _note(notes: list[str], text: str) -> None:
    if len(notes) < MAX_NOTES:
        notes.append(validate.safe_text(text, 200))


def _entries(document: Any, key: str, limit: int, name: str, notes: list[str]) -> list[Any]:
    """The list under ``key``; 1.4.3 before 0.9 kept a mapping by id there, read as well."""
    if document is None:
        return []
    items = document.get(key) if isinstance(document, dict) else None
    if isinstance(items, dict):
        items = [
            dict(value, **{"_key": k}) if isinstance(value, dict) else value
            for k, value in items.items()
        ]
    if not isinstance(items, list):
        _note(notes, f"{name} has no list of {key}")
        return []
    if len(items) > limit:
        _note(notes, f"{name} lists more than {limit} {key}; only the first {limit} are read")
        items = items[:limit]
    return items


def _environments(document: Any, notes: list[str]) -> tuple[LegacyEnv, ...]:
    result: list[LegacyEnv] = []
    seen: set[str] = set()
    for position, item in enumerate(_entries(document, "envs", MAX_ENVIRONMENTS, ENVS, notes)):
        try:
            env = _environment(item)
        except (RecordError, validate.InvalidValue, TypeError, ValueError, KeyError) as error:
            _note(notes, f"environment #{position + 1} of {ENVS} is left out: {error}")
            continue
        if env.eid in seen:
            _note(notes, f"environment {env.eid} is listed twice in {ENVS}; the first is used")
            continue
        seen.add(env.eid)
        result.append(env)
    return tuple(result)


def _environment(item: Any) -> LegacyEnv:
    if not isinstance(item, dict):
        raise RecordError("not an object")
    eid = validate.environment_id(item.get("eid", item.get("_key")))
    uid = item.get("uid")
    claimed = None if uid is None else validate.uid(_whole(uid))
    username = item.get("username")
    config = item.get("config") or {}
    if not isinstance(config, dict):
        raise RecordError("its config is not an object")
    name, gpus, memory = config.get("name"), config.get("gpus"), config.get("gpu_memory")
    pids = _list(item.get("pids") or [], MAX_PIDS, "pids")
    kernels = _list(item.get("kernel_ids") or [], MAX_KERNELS, "kernel ids")
    return LegacyEnv(
        eid=eid,
        claimed_uid=claimed,
        username=None if username is None else validate.username(username),
        creation=_time(item.get("creation")),
        config=EnvConfig(
            name=None if name is None else validate.environment_name(name),
            gpus=None if gpus is None else validate.count(_whole(gpus)),
            gpu_memory=None if memory is None else validate.memory_amount(memory),
        ),
        pids=tuple(dict.fromkeys(validate.pid(_whole(pid)) for pid in pids)),
        kernel_ids=tuple(dict.fromkeys(validate.kernel_id(k) for k in kernels)),
    )


def _attachments(document: Any, notes: list[str]) -> tuple[LegacyAttachment, ...]:
    result: list[LegacyAttachment] = []
    seen: set[tuple[int, str]] = set()
    for position, item in enumerate(_entries(document, "devices", MAX_DEVICES, DEVICES, notes)):
        try:
            if not isinstance(item, dict):
                raise RecordError("not an object")
            index = validate.device_index(_whole(item.get("index", _key_index(item))))
            raw = item.get("attachments")
            if raw is None and isinstance(item.get("eids"), dict):  # before 0.9
                raw = list(item["eids"].values())
            entries = _list(raw or [], MAX_ATTACHMENTS, "attachments")
        except (RecordError, validate.InvalidValue, TypeError, ValueError, KeyError) as error:
            _note(notes, f"device #{position + 1} of {DEVICES} is left out: {error}")
            continue
        for entry in entries:
            try:
                if not isinstance(entry, dict):
                    raise RecordError("not an object")
                eid = validate.environment_id(entry.get("eid"))
                memory = entry.get("gpu_memory")
                attachment = LegacyAttachment(
                    device_index=index,
                    eid=eid,
                    gpu_memory=None if memory is None else validate.memory_amount(memory),
                    time=_time(entry.get("time", entry.get("attached"))),
                )
            except (RecordError, validate.InvalidValue, TypeError, ValueError, KeyError) as error:
                _note(notes, f"an attachment to device {index} is left out: {error}")
                continue
            if (index, eid) in seen:
                continue
            seen.add((index, eid))
            result.append(attachment)
    return tuple(result)


def _key_index(item: dict[str, Any]) -> Any:
    key = item.get("_key")
    return int(key) if isinstance(key, str) and validate.decimal(key) and len(key) < 6 else key


def _list(value: Any, limit: int, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise RecordError(f"its {what} are not a list")
    if len(value) > limit:
        raise RecordError(f"more than {limit} {what}")
    return value


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"{validate.safe_text(repr(value), 30)} is not a whole number")
    return value


def _time(value: Any) -> float | None:
    """1.4.3's local time text as seconds since the epoch; None when it is not one."""
    if not isinstance(value, str) or len(value) > 32:
        return None
    try:
        when = datetime.strptime(value, TIME_FORMAT).timestamp()
    except (ValueError, OverflowError, OSError):
        return None
    return when if 0 <= when < constants.MAX_TIME else None
