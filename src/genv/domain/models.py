"""Devices, GPU processes, environments and attachments: plain values shared by every layer."""

from __future__ import annotations

from genv.domain.values import value


@value
class Device:
    """A GPU as the hardware reports it now. ``used_memory`` is None when it cannot be read."""

    index: int
    uuid: str
    name: str
    total_memory: int
    used_memory: int | None = None


@value
class DeviceTelemetry:
    """What monitoring shows of a device beyond memory: temperature (degrees C) and compute
    utilization (percent of the last sample period); None where the device does not say.
    Read only by monitors (``genv monitor``, ``genv top``): the enforcer needs neither."""

    index: int
    temperature: int | None = None
    utilization: int | None = None


@value
class GpuProcess:
    """A compute process on one device, with the host pid NVML reports.

    ``used_memory`` is None when the driver does not say (e.g. some MPS or vGPU setups).
    """

    pid: int
    device_index: int
    device_uuid: str
    used_memory: int | None = None


@value
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


@value
class EnvConfig:
    """What the user asked of an environment. ``gpu_memory`` keeps the text they wrote (``4g``)."""

    name: str | None = None
    gpus: int | None = None
    gpu_memory: str | None = None


@value
class RegisteredProcess:
    """A process registered in an environment: pid plus its start (clock ticks since boot, see
    genv.system.procfs), since pids are reused. A start of None names no process."""

    pid: int
    start: int | None = None


@value
class Environment:
    """A GPU environment. ``uid`` is its owner, taken from who wrote the record, not its text."""

    eid: str
    uid: int
    username: str | None
    creation: float
    config: EnvConfig = EnvConfig()  # immutable: one shared default is no default_factory
    processes: tuple[RegisteredProcess, ...] = ()
    kernel_ids: tuple[str, ...] = ()

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(process.pid for process in self.processes)

    @property
    def key(self) -> tuple[int, str]:
        """Ids are unique per owner: two users may both have an environment ``1234``."""
        return (self.uid, self.eid)


@value
class Attachment:
    """A device given to an environment, with the capacity it reserved on that device."""

    device_index: int
    eid: str
    uid: int
    time: float
    gpu_memory: str | None = None
    over_subscribed: bool = False
    device_uuid: str | None = None

    @property
    def env_key(self) -> tuple[int, str]:
        return (self.uid, self.eid)


@value
class Revocation:
    """Root took back an attachment (``device`` set) or a whole environment (``device`` None).

    Root writes revocations into its own file instead of other users' files, so that no user
    can stall it (their files are theirs to lock). ``time`` is the attachment's time or the
    environment's creation, so that attaching again later is not revoked.
    """

    uid: int
    eid: str
    device: int | None
    time: float


@value
class UserRecords:
    """The decoded contents of one user's state file.

    ``revocations`` and ``holdings`` come from root's file only: what root revoked, and the
    devices each user held when root last could read their file (see genv.store).
    """

    uid: int
    environments: tuple[Environment, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    revocations: tuple[Revocation, ...] = ()
    holdings: tuple[Attachment, ...] = ()
    holdings_published: bool = False
