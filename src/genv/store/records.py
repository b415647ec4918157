"""The on-disk form of one user's environments and attachments, with a version to migrate from."""

from __future__ import annotations

import json
import math
from typing import Any

from genv.domain.models import Attachment, EnvConfig, Environment, RegisteredProcess

FORMAT_VERSION = 1


class RecordError(ValueError):
    """A state file whose contents are not a genv state of a version we know."""


def encode(uid: int, environments: list[Environment], attachments: list[Attachment]) -> bytes:
    document = {
        "version": FORMAT_VERSION,
        "uid": uid,
        "environments": [_encode_environment(env) for env in environments],
        "attachments": [_encode_attachment(item) for item in attachments],
    }
    return json.dumps(document, separators=(",", ":")).encode()


def decode(data: bytes, owner_uid: int) -> tuple[list[Environment], list[Attachment]]:
    """Records of ``owner_uid``: the uid comes from who owns the file, never from its text."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecordError(f"not valid JSON ({error})") from None
    except RecursionError:
        raise RecordError("not a genv state document (nested too deeply)") from None
    if not isinstance(document, dict):
        raise RecordError("not a genv state document")
    version = document.get("version")
    if version != FORMAT_VERSION:
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise RecordError(f"written by a newer genv (format {version}); upgrade genv")
        raise RecordError(f"unknown format version {version!r}")
    if document.get("uid") != owner_uid:
        raise RecordError(f"records of uid {document.get('uid')!r} in a file of uid {owner_uid}")
    try:
        environments = [_decode_environment(item, owner_uid) for item in document["environments"]]
        attachments = [_decode_attachment(item, owner_uid) for item in document["attachments"]]
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
        raise RecordError(f"malformed record ({type(error).__name__}: {error})") from None
    return environments, attachments


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
        "processes": [[process.pid, process.start_time] for process in env.processes],
        "kernel_ids": list(env.kernel_ids),
    }


def _decode_environment(item: dict[str, Any], uid: int) -> Environment:
    config = item.get("config") or {}
    gpus = config.get("gpus")
    return Environment(
        eid=_text(item["eid"]),
        uid=uid,
        username=_optional_text(item.get("username")),
        creation=_time(item["creation"]),
        config=EnvConfig(
            name=_optional_text(config.get("name")),
            gpus=None if gpus is None else int(gpus),
            gpu_memory=_optional_text(config.get("gpu_memory")),
        ),
        processes=tuple(
            RegisteredProcess(int(pid), None if start is None else _time(start))
            for pid, start in item.get("processes", [])
        ),
        kernel_ids=tuple(_text(kernel) for kernel in item.get("kernel_ids", [])),
    )


def _encode_attachment(item: Attachment) -> dict[str, Any]:
    return {
        "device": item.device_index,
        "uuid": item.device_uuid,
        "eid": item.eid,
        "time": item.time,
        "gpu_memory": item.gpu_memory,
        "over_subscribed": item.over_subscribed,
    }


def _decode_attachment(item: dict[str, Any], uid: int) -> Attachment:
    return Attachment(
        device_index=int(item["device"]),
        eid=_text(item["eid"]),
        uid=uid,
        time=_time(item["time"]),
        gpu_memory=_optional_text(item.get("gpu_memory")),
        over_subscribed=bool(item.get("over_subscribed", False)),
        device_uuid=_optional_text(item.get("uuid")),
    )


def _time(value: Any) -> float:
    """Seconds since the epoch; NaN or infinity would break every printed time."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a time in seconds, got {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result) or result < 0:
        raise ValueError(f"time {value!r} is out of range")
    return result


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)
