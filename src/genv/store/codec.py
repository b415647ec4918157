"""The on-disk form of one user's records, decoded with limits.

A state file is written by its owner, who may be hostile: it may hold numbers with thousands
of digits, pids out of range, capacities that are not amounts, huge lists, deep nesting,
duplicated entries. Decoding bounds everything (size, counts, ranges, lengths, characters)
and any deviation makes the whole file bad (``RecordError``), which affects its owner alone.
Nothing here raises anything else, whatever the bytes.

Format 2 names processes by their start in clock ticks since boot, under the boot id the file
records; format 1 (wall-clock start times) is still read, through ``legacy_start``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

from genv.domain import validate
from genv.domain.constants import MAX_START
from genv.domain.constants import MAX_TIME as MAX_TIME
from genv.domain.models import (
    Attachment,
    EnvConfig,
    Environment,
    RegisteredProcess,
    Revocation,
    UserRecords,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from typing import Any

FORMAT_VERSION = 2
MAX_FILE_BYTES = 1 << 20
# Root's file also says which devices every user holds and what root revoked from whom
# (up to MAX_HOLDINGS and MAX_REVOCATIONS entries of every user): room for all of them.
MAX_ROOT_FILE_BYTES = 64 << 20


def max_bytes(owner_uid: int) -> int:
    """The largest file of ``owner_uid`` that is read (and so may be written)."""
    return MAX_ROOT_FILE_BYTES if owner_uid == 0 else MAX_FILE_BYTES


MAX_ENVIRONMENTS = 1024
MAX_PROCESSES_PER_ENV = 1024
MAX_KERNELS_PER_ENV = 64
# In one file, all environments together: each registered process and kernel is looked at
# by every reader, so one user's file must not make every read slow.
MAX_PROCESSES_PER_FILE = 4096
MAX_KERNELS_PER_FILE = 256
MAX_ATTACHMENTS = 4096
MAX_REVOCATIONS = 65536
MAX_HOLDINGS = 65536

_MAX_NUMBER_TEXT = 24

LegacyStart = Callable[[int, float], "int | None"]


class RecordError(ValueError):
    """A state file that is not a genv state of a version we know, or breaks a limit."""


def encode(records: UserRecords, boot_id: str) -> bytes:
    document: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "uid": records.uid,
        "boot_id": boot_id,
        "environments": [_encode_environment(env) for env in records.environments],
        "attachments": [_encode_attachment(item) for item in records.attachments],
    }
    if records.revocations:
        document["revoked"] = [[r.uid, r.eid, r.device, r.time] for r in records.revocations]
    if records.holdings_published:
        document["holdings"] = [
            [h.uid, h.eid, h.device_index, h.time, h.gpu_memory, h.over_subscribed]
            for h in records.holdings
        ]
    return json.dumps(document, separators=(",", ":")).encode()


def decode(
    data: bytes,
    owner_uid: int,
    boot_id: str,
    legacy_start: LegacyStart | None = None,
) -> UserRecords:
    """The records in ``data`` of ``owner_uid`` (who owns the file: never what its text says).

    Processes recorded under another boot than ``boot_id`` are gone, so they keep no start.
    """
    document = parse_json(data, max_bytes(owner_uid))
    try:
        return _decode_document(document, owner_uid, boot_id, legacy_start)
    except RecordError:
        raise
    except validate.InvalidValue as error:
        raise RecordError(_short(error)) from None
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
        raise RecordError(f"malformed record ({type(error).__name__}: {_short(error)})") from None


def parse_json(data: bytes, limit: int) -> Any:
    """JSON with limits: no number of thousands of digits, no NaN, no key twice, no nesting
    deep enough to exhaust the stack. RecordError for anything else."""
    if len(data) > limit:
        raise RecordError(f"larger than {limit} bytes")
    try:
        return json.loads(
            data,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_reject_constant,
            object_pairs_hook=_object,
        )
    except RecursionError:
        raise RecordError("nested too deeply") from None
    except RecordError:
        raise
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise RecordError(f"not valid JSON ({_short(error)})") from None


def _decode_document(
    document: Any, owner_uid: int, boot_id: str, legacy_start: LegacyStart | None
) -> UserRecords:
    if not isinstance(document, dict):
        raise RecordError("not a genv state document")
    version = document.get("version")
    if version not in (1, FORMAT_VERSION):
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise RecordError(f"written by a newer genv (format {version}); upgrade genv")
        raise RecordError(f"unknown format version {_shown(version)}")
    if document.get("uid") != owner_uid:
        raise RecordError(
            f"records of uid {_shown(document.get('uid'))} in a file of uid {owner_uid}"
        )
    same_boot = version == FORMAT_VERSION and document.get("boot_id") == boot_id
    if version == FORMAT_VERSION:
        if not isinstance(document.get("boot_id"), str):
            raise RecordError("no boot id")

        def start_of(pid: int, value: Any) -> int | None:
            start = _optional_int(value, 0, MAX_START, "process start")
            return start if same_boot else None
    else:

        def start_of(pid: int, value: Any) -> int | None:
            wall = None if value is None else _time(value)
            if wall is None or legacy_start is None:
                return None
            return legacy_start(pid, wall)

    environments = _decode_environments(document.get("environments"), owner_uid, start_of)
    eids = {env.eid for env in environments}
    attachments = _decode_attachments(document.get("attachments"), owner_uid, eids)
    revocations: tuple[Revocation, ...] = ()
    holdings: tuple[Attachment, ...] = ()
    published = False
    if owner_uid == 0:
        revocations = _decode_revocations(document.get("revoked", []))
        published = "holdings" in document
        holdings = _decode_holdings(document.get("holdings", []))
    return UserRecords(owner_uid, environments, attachments, revocations, holdings, published)


def _decode_environments(
    items: Any, uid: int, start_of: Callable[[int, Any], int | None]
) -> tuple[Environment, ...]:
    _bounded_list(items, MAX_ENVIRONMENTS, "environments")
    environments = []
    seen: set[str] = set()
    processes = kernels = 0
    for item in items:
        env = _decode_environment(_dict(item, "environment"), uid, start_of)
        if env.eid in seen:
            raise RecordError(f"environment {env.eid} is listed twice")
        seen.add(env.eid)
        processes += len(env.processes)
        kernels += len(env.kernel_ids)
        if processes > MAX_PROCESSES_PER_FILE or kernels > MAX_KERNELS_PER_FILE:
            raise RecordError(
                f"more than {MAX_PROCESSES_PER_FILE} processes or {MAX_KERNELS_PER_FILE} "
                "kernels registered in all"
            )
        environments.append(env)
    return tuple(environments)


def _decode_environment(
    item: dict[str, Any], uid: int, start_of: Callable[[int, Any], int | None]
) -> Environment:
    eid = validate.environment_id(item["eid"])
    config = _dict(item.get("config") or {}, "config")
    gpus = config.get("gpus")
    name = config.get("name")
    gpu_memory = config.get("gpu_memory")
    username = item.get("username")
    raw_processes = item.get("processes", [])
    _bounded_list(raw_processes, MAX_PROCESSES_PER_ENV, "processes")
    processes = []
    pids: set[int] = set()
    for entry in raw_processes:
        _bounded_list(entry, 2, "process")
        if len(entry) != 2:
            raise RecordError("a process is not [pid, start]")
        pid = validate.pid(_int(entry[0]))
        if pid in pids:
            raise RecordError(f"process {pid} is listed twice in environment {eid}")
        pids.add(pid)
        processes.append(RegisteredProcess(pid, start_of(pid, entry[1])))
    raw_kernels = item.get("kernel_ids", [])
    _bounded_list(raw_kernels, MAX_KERNELS_PER_ENV, "kernel ids")
    kernels = tuple(validate.kernel_id(kernel) for kernel in raw_kernels)
    if len(set(kernels)) != len(kernels):
        raise RecordError(f"a kernel is listed twice in environment {eid}")
    return Environment(
        eid=eid,
        uid=uid,
        username=None if username is None else validate.username(username),
        creation=_time(item["creation"]),
        config=EnvConfig(
            name=None if name is None else validate.environment_name(name),
            gpus=None if gpus is None else _count(gpus),
            gpu_memory=None if gpu_memory is None else validate.memory_amount(gpu_memory),
        ),
        processes=tuple(processes),
        kernel_ids=kernels,
    )


def _decode_attachments(items: Any, uid: int, eids: set[str]) -> tuple[Attachment, ...]:
    _bounded_list(items, MAX_ATTACHMENTS, "attachments")
    attachments = []
    seen: set[tuple[str, int]] = set()
    for raw in items:
        item = _dict(raw, "attachment")
        attachment = Attachment(
            device_index=_device(item["device"]),
            eid=validate.environment_id(item["eid"]),
            uid=uid,
            time=_time(item["time"]),
            gpu_memory=_optional_amount(item.get("gpu_memory")),
            over_subscribed=_bool(item.get("over_subscribed", False)),
            device_uuid=_optional_uuid(item.get("uuid")),
        )
        if attachment.eid not in eids:
            raise RecordError(f"an attachment names environment {attachment.eid}, not listed")
        key = (attachment.eid, attachment.device_index)
        if key in seen:
            raise RecordError(
                f"environment {attachment.eid} is attached twice to device "
                f"{attachment.device_index}"
            )
        seen.add(key)
        attachments.append(attachment)
    return tuple(attachments)


def _decode_revocations(items: Any) -> tuple[Revocation, ...]:
    _bounded_list(items, MAX_REVOCATIONS, "revocations")
    revocations = []
    for entry in items:
        _bounded_list(entry, 4, "revocation")
        if len(entry) != 4:
            raise RecordError("a revocation is not [uid, eid, device, time]")
        device = None if entry[2] is None else _device(entry[2])
        revocations.append(
            Revocation(
                validate.uid(_int(entry[0])),
                validate.environment_id(entry[1]),
                device,
                _time(entry[3]),
            )
        )
    return tuple(revocations)


def _decode_holdings(items: Any) -> tuple[Attachment, ...]:
    _bounded_list(items, MAX_HOLDINGS, "holdings")
    holdings = []
    for entry in items:
        _bounded_list(entry, 6, "holding")
        if len(entry) != 6:
            raise RecordError("a holding is not [uid, eid, device, time, memory, shared]")
        holdings.append(
            Attachment(
                device_index=_device(entry[2]),
                eid=validate.environment_id(entry[1]),
                uid=validate.uid(_int(entry[0])),
                time=_time(entry[3]),
                gpu_memory=_optional_amount(entry[4]),
                over_subscribed=_bool(entry[5]),
            )
        )
    return tuple(holdings)


def _encode_environment(env: Environment) -> dict[str, Any]:
    return {
        "eid": env.eid,
        "username": env.username,
        "creation": env.creation,
        "config": {
            "name": env.config.name,
            "gpus": env.config.gpus,
            "gpu_memory": env.config.gpu_memory,
        },
        "processes": [[process.pid, process.start] for process in env.processes],
        "kernel_ids": list(env.kernel_ids),
    }


def _encode_attachment(item: Attachment) -> dict[str, Any]:
    return {
        "device": item.device_index,
        "uuid": item.device_uuid,
        "eid": item.eid,
        "time": item.time,
        "gpu_memory": item.gpu_memory,
        "over_subscribed": item.over_subscribed,
    }


# -- bounded pieces --------------------------------------------------------------------------


def _parse_int(text: str) -> int:
    if len(text) > _MAX_NUMBER_TEXT:
        raise RecordError(f"a number of {len(text)} digits")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > _MAX_NUMBER_TEXT + 16:
        raise RecordError("a number that is too long")
    value = float(text)
    if not math.isfinite(value):
        raise RecordError("a number out of range")
    return value


def _reject_constant(text: str) -> Any:
    raise RecordError(f"{text} is not a number")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise RecordError(f"key {_shown(key)} appears twice")
        result[key] = value
    return result


def _bounded_list(value: Any, limit: int, what: str) -> None:
    if not isinstance(value, list):
        raise RecordError(f"{what} is not a list")
    if len(value) > limit:
        raise RecordError(f"more than {limit} {what}")


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RecordError(f"a{'n' if what[0] in 'aeiou' else ''} {what} is not an object")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"expected a whole number, got {_shown(value)}")
    return value


def _optional_int(value: Any, low: int, high: int, what: str) -> int | None:
    if value is None:
        return None
    number = _int(value)
    if not low <= number <= high:
        raise RecordError(f"{what} {number} is out of range")
    return number


def _count(value: Any) -> int:
    return validate.count(_int(value))


def _device(value: Any) -> int:
    return validate.device_index(_int(value))


def _time(value: Any) -> float:
    """Seconds since the epoch, in a range every listing can print."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"expected a time in seconds, got {_shown(value)}")
    result = float(value)
    if not math.isfinite(result) or not 0 <= result < MAX_TIME:
        raise RecordError(f"time {value!r} is out of range")
    return result


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise RecordError(f"expected true or false, got {_shown(value)}")
    return value


def _optional_amount(value: Any) -> str | None:
    return None if value is None else validate.memory_amount(value)


def _optional_uuid(value: Any) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= 96
        or not all(c.isascii() and (c.isalnum() or c == "-") for c in value)
    ):
        raise RecordError("a device uuid that is not one")
    return value


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return repr(validate.safe_text(value, 40))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = repr(value)
        return text if len(text) <= 24 else text[:21] + "..."
    return type(value).__name__


def _short(error: BaseException) -> str:
    return validate.safe_text(str(error), 120)
