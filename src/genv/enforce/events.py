"""What the daemon tells its sinks besides each action: that a cycle is over, and how it went.

The Reporter (genv.enforce.report) is the daemon's one sink; other sinks (the daemon's own
Prometheus metrics, genv.metrics.enforcement) sit beside it through ``Fanout``, so the
daemon calls one reporter whatever listens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from genv.enforce.plan import Plan

log = logging.getLogger("genv.enforce")

# Why a cycle did not complete (CycleEvent.error).
NOT_OBSERVED = "observe"  # the GPUs or the state could not be read: nothing was enforced
FAILED = "internal"  # the cycle raised: a bug, logged with its traceback


@dataclass(frozen=True)
class CycleEvent:
    """One enforcement cycle, told once it is over.

    ``started`` is wall-clock time (``time.time()``), ``duration`` seconds of wall time;
    ``plan`` what it concluded (None when it did not get that far); ``error`` None when it
    completed, else NOT_OBSERVED or FAILED; ``hosts_not_answering`` counts the hosts of a
    cluster that gave no snapshot this cycle (0 on one host).
    """

    started: float
    duration: float
    plan: Plan | None
    error: str | None = None
    hosts_not_answering: int = 0

    @property
    def complete(self) -> bool:
        return self.error is None and self.plan is not None


class Fanout:
    """One reporter made of several sinks: every event goes to each sink that has it.

    The first sink is the daemon's Reporter and behaves exactly as alone (its errors, such as
    a closed stdout, are the daemon's). A failure in any other sink is logged, once per
    event name, and never stops enforcement nor the sinks after it.
    """

    def __init__(self, first: object, *others: object) -> None:
        self.first = first
        self.others = others
        self._failed: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        plain = getattr(self.first, name, None)
        if plain is not None and not callable(plain):
            return plain  # a setting of the Reporter (json_lines, dry_run...), not an event
        targets = [
            method
            for sink in (self.first, *self.others)
            if (method := getattr(sink, name, None)) is not None
        ]
        if not targets:
            raise AttributeError(name)
        has_first = getattr(self.first, name, None) is not None

        def send(*args: Any, **kwargs: Any) -> None:
            for number, method in enumerate(targets):
                if number == 0 and has_first:
                    method(*args, **kwargs)
                    continue
                try:
                    method(*args, **kwargs)
                except Exception:
                    if name not in self._failed:
                        self._failed.add(name)
                        log.exception("a metrics sink failed on %s; enforcement goes on", name)

        setattr(self, name, send)  # looked up once per event name
        return send
