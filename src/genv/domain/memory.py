"""Memory amounts as people write them (``4g``, ``42mi``, ``44040192``) and as genv prints them."""

from __future__ import annotations

import re

from genv.errors import UsageError

MULTIPLIERS: dict[str, int] = {
    "b": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
}

MIB = MULTIPLIERS["mi"]

# ASCII only: Unicode case-folding makes "i" match "ı" and "İ" (no unit of ours), and \d
# other scripts' digits (a "１g" that reads as a gigabyte).
_AMOUNT = re.compile(r"^\s*(\d+)\s*(b|k|m|g|ki|mi|gi)?\s*$", re.IGNORECASE | re.ASCII)


class MemoryFormatError(UsageError, ValueError):
    """An amount of memory that cannot be understood."""


def parse_memory(text: str) -> int:
    """Bytes in ``text``: a whole number with an optional unit (b k m g ki mi gi)."""
    match = _AMOUNT.match(str(text))
    if not match:
        raise MemoryFormatError(
            f"invalid memory amount {text!r}: use a whole number and an optional unit "
            "b, k, m, g, ki, mi or gi (for example 4g or 512mi)"
        )
    number, unit = match.groups()
    return int(number) * MULTIPLIERS[(unit or "b").lower()]


def format_memory(amount: int, unit: str = "m") -> str:
    """``amount`` bytes in ``unit``, rounded down, with the unit as suffix (genv's style)."""
    return f"{amount // MULTIPLIERS[unit]}{unit}"
