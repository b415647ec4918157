"""What was asked of the nvidia-smi shim: a table, a list, or a CSV query; or something it
leaves to the real nvidia-smi."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# field -> (csv header, canonical name); aliases map to the same canonical name
GPU_FIELDS = {
    "index": "index",
    "uuid": "uuid",
    "gpu_uuid": "uuid",
    "name": "name",
    "gpu_name": "name",
    "count": "count",
    "memory.total": "memory.total [MiB]",
    "memory.used": "memory.used [MiB]",
    "memory.free": "memory.free [MiB]",
}
APP_FIELDS = {
    "pid": "pid",
    "process_name": "process_name",
    "name": "process_name",
    "gpu_uuid": "gpu_uuid",
    "gpu_name": "gpu_name",
    "used_gpu_memory": "used_gpu_memory [MiB]",
    "used_memory": "used_gpu_memory [MiB]",
}


@dataclass
class Request:
    """What was asked: a table, a list, or a CSV query of GPUs or compute apps."""

    list_gpus: bool = False
    query_gpu: list[str] | None = None
    query_apps: list[str] | None = None
    format: list[str] = field(default_factory=list)
    ids: list[str] | None = None


def parse(argv: Sequence[str]) -> Request | None:
    """The request, or None when any argument is one the shim leaves to the real nvidia-smi."""
    request = Request()
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, has_value, value = arg.partition("=")
        if name in ("--query-gpu", "--query-compute-apps", "--format", "-i", "--id"):
            if not has_value:
                if not args:
                    return None
                value = args.pop(0)
            items = [item.strip() for item in value.split(",") if item.strip()]
            if name == "--query-gpu":
                request.query_gpu = items
            elif name == "--query-compute-apps":
                request.query_apps = items
            elif name == "--format":
                request.format = [item.lower() for item in items]
            else:
                request.ids = items
        elif arg in ("-L", "--list-gpus"):
            request.list_gpus = True
        else:
            return None
    if request.query_gpu is not None and request.query_apps is not None:
        return None
    return request
