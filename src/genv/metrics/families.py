"""The usage metrics: genv 1.4.3's names, labels and meaning, and what they lacked.

Built from host samples (genv.metrics.source), so one host and a cluster give the same
metrics; a cluster source adds ``hostname`` as the first label of every metric, as genv
1.4.3's ``genv remote monitor`` did, and ``genv_host_up``.

Labels stay bounded: per device, environment and user (as many as the machine has), and
per process only while the machine has at most ``max_process_series`` GPU processes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric

from genv.domain.observation import Membership
from genv.metrics.source import HostSample
from genv.metrics.usage import PROBLEM_KINDS, HostUsage

DEFAULT_MAX_PROCESS_SERIES = 1000


@dataclass(frozen=True)
class Spec:
    name: str
    help: str
    labels: tuple[str, ...] = ()


# -- genv 1.4.3's metrics (same names, labels and meaning) ----------------------------------
IS_INSTALLED = Spec("genv_is_installed", "Whether genv is installed on the host (1 or 0)")
DEVICE_TEMPERATURE = Spec("genv_device_temperature", "Device temperature in degrees C", ("index",))
DEVICE_UTILIZATION = Spec(
    "genv_device_utilization", "Device compute utilization in percent", ("index",)
)
DEVICE_MEMORY_USED = Spec(
    "genv_device_memory_used_bytes", "Device used memory in bytes", ("index",)
)
DEVICE_MEMORY_TOTAL = Spec(
    "genv_device_memory_total_bytes", "Device total memory in bytes", ("index",)
)
ENVIRONMENTS = Spec("genv_environments_total", "Number of active environments")
PROCESSES = Spec("genv_processes_total", "Number of running GPU processes")
ATTACHED_DEVICES = Spec(
    "genv_attached_devices_total", "Number of devices attached to at least one environment"
)
USERS = Spec("genv_users_total", "Number of users with active environments")
ENVIRONMENT_PROCESSES = Spec(
    "genv_environment_processes_total",
    "Number of running GPU processes in an environment (environments of several users with "
    "one id are added up; see genv_environment_info)",
    ("eid",),
)
ENVIRONMENT_ATTACHED_DEVICES = Spec(
    "genv_environment_attached_devices_total",
    "Number of devices attached to an environment",
    ("eid",),
)
PROCESS_DEVICES = Spec(
    "genv_process_devices_total",
    "Number of devices used by a GPU process (eid empty outside environments)",
    ("pid", "eid"),
)
PROCESS_MEMORY = Spec(
    "genv_process_used_gpu_memory_bytes",
    "GPU memory used by a process on a device",
    ("pid", "eid", "device"),
)
USER_ENVIRONMENTS = Spec(
    "genv_user_environments_total", "Number of active environments of a user", ("username",)
)
USER_PROCESSES = Spec(
    "genv_user_processes_total",
    "Number of running GPU processes in the environments of a user",
    ("username",),
)
USER_ATTACHED_DEVICES = Spec(
    "genv_user_attached_devices_total",
    "Number of devices attached to the environments of a user",
    ("username",),
)

# -- what genv 1.4.3 lacked ---------------------------------------------------------------
DEVICE_INFO = Spec(
    "genv_device_info", "A device, by index: its UUID and name", ("index", "uuid", "name")
)
DEVICE_RESERVED = Spec(
    "genv_device_memory_reserved_bytes",
    "GPU memory of a device reserved by the capacities of the environments attached to it "
    "(an environment without a capacity reserves the whole device)",
    ("index",),
)
DEVICE_ENVIRONMENTS = Spec(
    "genv_device_attached_environments",
    "Number of environments attached to a device",
    ("index",),
)
ENVIRONMENT_INFO = Spec(
    "genv_environment_info",
    "An active environment: its owner and name",
    ("eid", "username", "name"),
)
ENVIRONMENT_MEMORY_USED = Spec(
    "genv_environment_gpu_memory_used_bytes",
    "GPU memory the processes of an environment use on a device",
    ("eid", "username", "device"),
)
ENVIRONMENT_MEMORY_CAPACITY = Spec(
    "genv_environment_gpu_memory_capacity_bytes",
    "GPU memory an environment may use on an attached device: its capacity, or the whole "
    "device when it has none",
    ("eid", "username", "device"),
)
USER_MEMORY_USED = Spec(
    "genv_user_gpu_memory_used_bytes",
    "GPU memory used by all GPU processes of a user, in environments or not, all devices",
    ("username",),
)
USER_MEMORY_CAPACITY = Spec(
    "genv_user_gpu_memory_capacity_bytes",
    "GPU memory the environments of a user may use, all devices together",
    ("username",),
)
USER_DEVICES_IN_USE = Spec(
    "genv_user_devices_in_use",
    "Number of devices on which GPU processes of a user run",
    ("username",),
)
USER_GPU_PROCESSES = Spec(
    "genv_user_gpu_processes",
    "Number of GPU processes running as a user, in environments or not",
    ("username",),
)
PROCESSES_BY_MEMBERSHIP = Spec(
    "genv_gpu_processes",
    "Number of GPU processes by membership: in-env, no-env, impostor (claims another user's "
    "environment) or unknown (its environment could not be read)",
    ("membership",),
)
STATE_PROBLEMS = Spec(
    "genv_state_problems",
    "Number of state files that cannot be used, by kind: invalid, unreadable, io-error, "
    "foreign (planted under another user's name)",
    ("kind",),
)
USER_STATE_PROBLEM = Spec(
    "genv_user_state_problem",
    "1 while the state file of a user cannot be used, with the kind of problem",
    ("username", "kind"),
)
GPU_PARTIAL = Spec(
    "genv_gpu_view_partial",
    "1 when some GPU or process list could not be read (what it holds is unknown)",
)
PROCESS_SERIES_OMITTED = Spec(
    "genv_process_series_omitted",
    "1 when the per-process metrics are left out: more GPU processes than the exporter's "
    "--max-process-series",
)
HOST_UP = Spec("genv_host_up", "1 when the host answered the last collection (clusters only)")


class _Family:
    """A gauge being built; samples with the same labels are added up."""

    def __init__(self, spec: Spec, host: bool) -> None:
        self.spec = spec
        self.host = host
        self.values: dict[tuple[str, ...], float] = defaultdict(float)

    def add(self, hostname: str | None, labels: Iterable[object], value: float) -> None:
        key = tuple(str(label) for label in labels)
        if self.host:
            key = (hostname or "", *key)
        self.values[key] += value

    def metric(self) -> Metric:
        names = (("hostname",) if self.host else ()) + self.spec.labels
        family = GaugeMetricFamily(self.spec.name, self.spec.help, labels=list(names))
        for labels, value in self.values.items():
            family.add_metric(list(labels), value)
        return family


def usage_families(
    samples: Sequence[HostSample],
    cluster: bool = False,
    max_process_series: int = DEFAULT_MAX_PROCESS_SERIES,
) -> list[Metric]:
    """Every usage metric for ``samples``; ``cluster`` adds the ``hostname`` label."""
    families: dict[str, _Family] = {}

    def family(spec: Spec) -> _Family:
        found = families.get(spec.name)
        if found is None:
            found = families[spec.name] = _Family(spec, cluster)
        return found

    for spec in SPECS:  # declared even when empty, so that queries know them
        family(spec)
    total_processes = sum(len(s.usage.processes) for s in samples if s.usage is not None)
    per_process = total_processes <= max_process_series
    for sample in samples:
        host = sample.host
        if cluster:
            family(HOST_UP).add(host, (), 1.0 if sample.usage is not None else 0.0)
        family(IS_INSTALLED).add(host, (), 1.0 if sample.installed else 0.0)
        if sample.usage is not None:
            _host(sample.usage, host, family, per_process)
    if not cluster:
        del families[HOST_UP.name]
    return [f.metric() for f in families.values()]


def _host(usage: HostUsage, host: str | None, family, per_process: bool) -> None:  # noqa: ANN001
    for device in usage.devices:
        at = (device.index,)
        family(DEVICE_INFO).add(host, (device.index, device.uuid, device.name), 1)
        if device.temperature is not None:
            family(DEVICE_TEMPERATURE).add(host, at, device.temperature)
        if device.utilization is not None:
            family(DEVICE_UTILIZATION).add(host, at, device.utilization)
        if device.used_memory is not None:
            family(DEVICE_MEMORY_USED).add(host, at, device.used_memory)
        family(DEVICE_MEMORY_TOTAL).add(host, at, device.total_memory)
        family(DEVICE_RESERVED).add(host, at, device.reserved_memory)
        family(DEVICE_ENVIRONMENTS).add(host, at, device.environments)

    env_owners = {env.username for env in usage.environments}
    family(ENVIRONMENTS).add(host, (), len(usage.environments))
    family(PROCESSES).add(host, (), len(usage.processes))
    family(ATTACHED_DEVICES).add(host, (), sum(1 for d in usage.devices if d.environments))
    family(USERS).add(host, (), len(env_owners))

    for env in usage.environments:
        family(ENVIRONMENT_PROCESSES).add(host, (env.eid,), len(env.processes))
        family(ENVIRONMENT_ATTACHED_DEVICES).add(host, (env.eid,), len(env.devices))
        family(ENVIRONMENT_INFO).add(host, (env.eid, env.username, env.name or ""), 1)
        for index, used in env.used:
            family(ENVIRONMENT_MEMORY_USED).add(host, (env.eid, env.username, index), used)
        for index, capacity in env.capacity:
            family(ENVIRONMENT_MEMORY_CAPACITY).add(host, (env.eid, env.username, index), capacity)

    for user in usage.users:
        name = (user.username,)
        if user.environments:  # genv 1.4.3: users with environments
            family(USER_ENVIRONMENTS).add(host, name, user.environments)
            family(USER_PROCESSES).add(host, name, user.environment_processes)
            family(USER_ATTACHED_DEVICES).add(host, name, user.attached_devices)
            family(USER_MEMORY_CAPACITY).add(host, name, user.memory_capacity)
        family(USER_MEMORY_USED).add(host, name, user.memory_used)
        family(USER_DEVICES_IN_USE).add(host, name, user.devices_in_use)
        family(USER_GPU_PROCESSES).add(host, name, user.processes)
        if user.state_problem is not None:
            family(USER_STATE_PROBLEM).add(host, (user.username, user.state_problem), 1)

    by_membership = dict.fromkeys((m.value for m in Membership), 0)
    for process in usage.processes:
        by_membership[process.membership.value] += 1
        if per_process:
            eid = process.eid or ""
            family(PROCESS_DEVICES).add(host, (process.pid, eid), len(process.devices))
            for device_index, amount in process.memory:
                if amount is not None:
                    family(PROCESS_MEMORY).add(host, (process.pid, eid, device_index), amount)
    for membership, count in by_membership.items():
        family(PROCESSES_BY_MEMBERSHIP).add(host, (membership,), count)

    kinds = dict.fromkeys(PROBLEM_KINDS, 0)
    for kind, _ in usage.problems:
        kinds[kind] += 1
    for kind, count in kinds.items():
        family(STATE_PROBLEMS).add(host, (kind,), count)
    family(GPU_PARTIAL).add(host, (), 1.0 if usage.partial else 0.0)
    family(PROCESS_SERIES_OMITTED).add(host, (), 0.0 if per_process else 1.0)


SPECS: tuple[Spec, ...] = (
    IS_INSTALLED,
    DEVICE_TEMPERATURE,
    DEVICE_UTILIZATION,
    DEVICE_MEMORY_USED,
    DEVICE_MEMORY_TOTAL,
    ENVIRONMENTS,
    PROCESSES,
    ATTACHED_DEVICES,
    USERS,
    ENVIRONMENT_PROCESSES,
    ENVIRONMENT_ATTACHED_DEVICES,
    PROCESS_DEVICES,
    PROCESS_MEMORY,
    USER_ENVIRONMENTS,
    USER_PROCESSES,
    USER_ATTACHED_DEVICES,
    DEVICE_INFO,
    DEVICE_RESERVED,
    DEVICE_ENVIRONMENTS,
    ENVIRONMENT_INFO,
    ENVIRONMENT_MEMORY_USED,
    ENVIRONMENT_MEMORY_CAPACITY,
    USER_MEMORY_USED,
    USER_MEMORY_CAPACITY,
    USER_DEVICES_IN_USE,
    USER_GPU_PROCESSES,
    PROCESSES_BY_MEMBERSHIP,
    STATE_PROBLEMS,
    USER_STATE_PROBLEM,
    GPU_PARTIAL,
    PROCESS_SERIES_OMITTED,
    HOST_UP,
)
