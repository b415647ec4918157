"""Which devices an environment gets: free ones first, the least loaded when over-subscribing."""

from __future__ import annotations

from collections.abc import Sequence

from genv.domain.memory import parse_memory
from genv.domain.models import Attachment, Device
from genv.errors import GenvError


class AllocationError(GenvError):
    """The devices asked for cannot be given; the message is one line for the user."""


def _reserved(attachments: Sequence[Attachment], total: int) -> int:
    return sum(parse_memory(a.gpu_memory) if a.gpu_memory else total for a in attachments)


def is_available(device: Device, others: Sequence[Attachment], gpu_memory: str | None) -> bool:
    """Whether ``device`` can be given without over-subscription.

    A device is shared without over-subscription only when every environment on it, the new
    one included, reserved a memory capacity and the capacities fit in the device.
    """
    if not others:
        return True
    if gpu_memory is None or any(a.gpu_memory is None for a in others):
        return False
    return _reserved(others, device.total_memory) + parse_memory(gpu_memory) <= device.total_memory


def choose_by_count(
    devices: Sequence[Device],
    attachments: Sequence[Attachment],
    mine: set[int],
    count: int,
    gpu_memory: str | None,
    allow_over_subscription: bool,
) -> list[int]:
    """Indices the environment should hold to have ``count`` devices, keeping those it has."""
    if count < 0:
        raise AllocationError("the device count cannot be negative")
    held = sorted(mine)
    if count <= len(held):
        return held[:count]
    others = {
        d.index: [
            a for a in attachments if a.device_index == d.index and a.device_index not in mine
        ]
        for d in devices
    }
    candidates = [d for d in devices if d.index not in mine]
    free = [d.index for d in candidates if is_available(d, others[d.index], gpu_memory)]
    need = count - len(held)
    chosen = free[:need]
    if len(chosen) < need:
        if not allow_over_subscription:
            raise AllocationError(
                f"{count} devices were asked for but only {len(held) + len(free)} are "
                "available; use over-subscription (-o) to share devices"
            )
        busy = sorted(
            (d for d in candidates if d.index not in chosen),
            key=lambda d: (
                _reserved(others[d.index], d.total_memory),
                len(others[d.index]),
                d.index,
            ),
        )
        chosen += [d.index for d in busy[: need - len(chosen)]]
        if len(chosen) < need:
            raise AllocationError(
                f"{count} devices were asked for but this machine has {len(devices)}"
            )
    return sorted(held + chosen)


def check_index(
    devices: Sequence[Device],
    attachments: Sequence[Attachment],
    mine: set[int],
    index: int,
    gpu_memory: str | None,
    allow_over_subscription: bool,
) -> None:
    """Raise unless device ``index`` may be attached."""
    device = next((d for d in devices if d.index == index), None)
    if device is None:
        known = ", ".join(str(d.index) for d in devices) or "none"
        raise AllocationError(f"Device {index} does not exist (devices here: {known})")
    if index in mine or allow_over_subscription:
        return
    others = [a for a in attachments if a.device_index == index]
    if not is_available(device, others, gpu_memory):
        raise AllocationError(f"Device {index} is not available")
