"""Devices, GPU processes, environments and attachments: plain values shared by every layer."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Device:
    """A GPU as the hardware reports it now. ``used_memory`` is None when it cannot be read."""

    index: int
    uuid: str
    name: str
    total_memory: int
    used_memory: int | None = None


@dataclass(frozen=True)
class GpuProcess:
    """A compute process on one device, with the host pid NVML reports.

    ``used_memory`` is None when the driver does not say (e.g. some MPS or vGPU setups).
    """

    pid: int
    device_index: int
    device_uuid: str
    used_memory: int | None = None


@dataclass(frozen=True)
class GpuSnapshot:
    """What the GPUs look like at one moment; ``errors`` lists devices or calls that failed.

    ``partial`` is true when some device or process list could not be read this time (a
    driver error, a device lost): what is missing is unknown, not absent, so nothing may be
    terminated on such a view. A note that loses no process (memory not reported on a
    unified-memory part) goes to ``errors`` without making the view partial.
    """

    devices: tuple[Device, ...]
    processes: tuple[GpuProcess, ...]
    errors: tuple[str, ...] = ()
    partial: bool = False

    def device(self, index: int) -> Device | None:
        for device in self.devices:
            if device.index == index:
                return device
        return None


@dataclass(frozen=True)
class EnvConfig:
    """What the user asked of an environment. ``gpu_memory`` keeps the text they wrote (``4g``)."""

    name: str | None = None
    gpus: int | None = None
    gpu_memory: str | None = None


@dataclass(frozen=True)
class RegisteredProcess:
    """A process registered in an environment: pid plus start time, since pids are reused."""

    pid: int
    start_time: float | None = None


@dataclass(frozen=True)
class Environment:
    """A GPU environment. ``uid`` is its owner, taken from who wrote the record, not its text."""

    eid: str
    uid: int
    username: str | None
    creation: float
    config: EnvConfig = field(default_factory=EnvConfig)
    processes: tuple[RegisteredProcess, ...] = ()
    kernel_ids: tuple[str, ...] = ()

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(process.pid for process in self.processes)


@dataclass(frozen=True)
class Attachment:
    """A device given to an environment, with the capacity it reserved on that device."""

    device_index: int
    eid: str
    uid: int
    time: float
    gpu_memory: str | None = None
    over_subscribed: bool = False
    device_uuid: str | None = None
