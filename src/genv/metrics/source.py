"""Where usage samples come from: one per host.

``LocalSource`` (genv.metrics.local) reads this machine. A cluster source (``genv remote
monitor``, ``genv remote top``) implements the same ``Source`` and returns one sample per
host, with ``usage`` None for a host that did not answer; the exporter, the families and
``genv top`` take either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from genv.metrics.usage import HostUsage


@dataclass(frozen=True)
class HostSample:
    """One host's usage as last read; ``host`` is None for this machine alone."""

    host: str | None
    usage: HostUsage | None
    error: str | None = None  # why there is no usage
    installed: bool = True  # genv runs there (genv_is_installed)


class Source(Protocol):
    cluster: bool  # whether samples name their host (the metrics then carry ``hostname``)

    def collect(self) -> list[HostSample]:
        """Read every host once; raises GenvError only when nothing at all can be read."""
        ...

    def close(self) -> None: ...
