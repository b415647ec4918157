"""Times as genv prints them: ``N minutes ago``, or the stored timestamp with ``--timestamp``."""

from __future__ import annotations

import time

TIMESTAMP_FORMAT = "%d/%m/%Y %H:%M:%S"
_UNITS = ((60, "minute"), (60, "hour"), (24, "day"), (7, "week"))


def time_since(when: float, now: float | None = None) -> str:
    value = max(0, int((time.time() if now is None else now) - when))
    unit = "second"
    for amount, bigger in _UNITS:
        if value < amount:
            break
        value //= amount
        unit = bigger
    return f"{value} {unit}{'s' if value != 1 else ''} ago"


def timestamp(when: float) -> str:
    from datetime import datetime  # only --timestamp and queries print one

    return datetime.fromtimestamp(when).strftime(TIMESTAMP_FORMAT)
