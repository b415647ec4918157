"""What people type and what state files say, checked once, in one place.

Every value that ends up in a state file, a table, a CSV line or a log line passes through
here first, so no id or name can carry a control character, a comma or a newline, and no
number can be out of range. The same checks serve the command line (where a failure is a
usage error), the Python API and the state decoder (where a failure makes a file bad).
"""

from __future__ import annotations

import math
import re
import unicodedata

from genv.domain import constants
from genv.domain.memory import MemoryFormatError, parse_memory
from genv.errors import UsageError


class InvalidValue(UsageError):
    """A value that is not what it should be; the message says what would be."""


_ID = re.compile(r"[A-Za-z0-9._:@+/=-]+")
_KERNEL_ID = re.compile(r"[A-Za-z0-9_-]+")


def environment_id(text: object) -> str:
    """An environment id: letters, digits and ``. _ : @ + / = -``, at most 128 of them."""
    if not isinstance(text, str) or not _ID.fullmatch(text):
        raise InvalidValue(
            f"invalid environment id {_shown(text)}: use letters, digits and . _ : @ + / = -"
        )
    if len(text) > constants.MAX_ID_LENGTH:
        raise InvalidValue(
            f"environment id is too long ({len(text)} characters; at most "
            f"{constants.MAX_ID_LENGTH})"
        )
    return text


def kernel_id(text: object) -> str:
    """A Jupyter kernel id (a UUID, in practice): letters, digits, ``_`` and ``-``."""
    if not isinstance(text, str) or not _KERNEL_ID.fullmatch(text):
        raise InvalidValue(f"invalid kernel id {_shown(text)}: use letters, digits, _ and -")
    if len(text) > constants.MAX_ID_LENGTH:
        raise InvalidValue(f"kernel id is too long (at most {constants.MAX_ID_LENGTH})")
    return text


def environment_name(text: object) -> str:
    """A name people read: any printable text without commas, at most 128 characters."""
    return _printable(text, "environment name", allow_space=True)


def username(text: object) -> str:
    """A user name as given to ``--username``: printable, without spaces or commas."""
    return _printable(text, "user name", allow_space=False)


def _printable(text: object, what: str, allow_space: bool) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidValue(f"the {what} cannot be empty")
    if len(text) > constants.MAX_NAME_LENGTH:
        raise InvalidValue(
            f"the {what} is too long ({len(text)} characters; at most {constants.MAX_NAME_LENGTH})"
        )
    for character in text:
        if character == "," or not _printable_character(character, allow_space):
            raise InvalidValue(
                f"the {what} {_shown(text)} has a character that is not allowed "
                f"({_shown(character)}); use printable text without commas"
            )
    return text


def _printable_character(character: str, allow_space: bool) -> bool:
    if character == " ":
        return allow_space
    category = unicodedata.category(character)
    # Cc control, Cf format (bidi overrides), Zl/Zp line and paragraph separators, Zs other
    # spaces, Cs/Co/Cn surrogates, private and unassigned.
    return category[0] not in "CZ"


def count(value: object, what: str = "device count", maximum: int = constants.MAX_DEVICES) -> int:
    """A whole number from 0 to ``maximum`` (text or int)."""
    number = _integer(value, what)
    if number < 0:
        raise InvalidValue(f"the {what} cannot be negative")
    if number > maximum:
        raise InvalidValue(f"the {what} {number} is more than the maximum of {maximum}")
    return number


def device_index(value: object) -> int:
    return count(value, "device index", constants.MAX_DEVICES - 1)


def uid(value: object) -> int:
    number = _integer(value, "uid")
    if not 0 <= number <= constants.MAX_UID:
        raise InvalidValue(f"uid {number} is out of range (0 to {constants.MAX_UID})")
    return number


def pid(value: object) -> int:
    number = _integer(value, "pid")
    if not 0 < number <= constants.PID_MAX:
        raise InvalidValue(f"pid {number} is out of range (1 to {constants.PID_MAX})")
    return number


def memory_amount(text: object) -> str:
    """An amount of memory as written (``4g``, ``512mi``), trimmed; its bytes must be sane."""
    if not isinstance(text, str) or len(text) > 32:
        raise InvalidValue(f"invalid memory amount {_shown(text)}: use e.g. 4g or 512mi")
    try:
        amount = parse_memory(text)
    except MemoryFormatError as error:
        raise InvalidValue(str(error)) from None
    if amount > constants.MAX_MEMORY:
        raise InvalidValue(f"memory amount {text.strip()} is larger than any device")
    return text.strip()


def seconds(value: object, what: str, maximum: float) -> float:
    """A duration in seconds: finite, zero or more, at most ``maximum``."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidValue(f"{_shown(value)} is not a number of seconds for {what}") from None
    if not math.isfinite(number) or number < 0:
        raise InvalidValue(f"{what} must be a finite number of seconds, zero or more")
    if number > maximum:
        raise InvalidValue(f"{what} of {number:g} seconds is more than the maximum of {maximum:g}")
    return number


MAX_REFRESH_SECONDS = 3600.0


def refresh_interval(value: object, what: str = "--interval") -> float:
    """Seconds between two refreshes of a view or collections of an exporter: at least 0.1
    (faster is load, not information), at most an hour."""
    number = seconds(value, what, MAX_REFRESH_SECONDS)
    if number < 0.1:
        raise InvalidValue(f"{what} must be at least 0.1 seconds")
    return number


def decimal(text: str) -> bool:
    """Whether ``text`` is digits 0-9 only: ``str.isdigit`` is also true of "²" and of other
    scripts' digits, which ``int`` refuses or reads as a number nobody typed as one."""
    return text.isascii() and text.isdigit()


def _integer(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise InvalidValue(f"the {what} must be a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text and len(text) <= 20 and (decimal(text) or (text[0] == "-" and decimal(text[1:]))):
            return int(text)
    raise InvalidValue(f"invalid {what} {_shown(value)}: use a whole number")


def safe_text(text: str, limit: int = 256) -> str:
    """``text`` fit for a plain log line or a table cell: control and format characters are
    escaped, so that nothing a process or a user chose can start a line or forge a field."""
    out = []
    for character in text[:limit]:
        if character == "\\" or not _printable_character(character, allow_space=True):
            out.append(
                character.encode("unicode_escape").decode("ascii") if character != "\\" else "\\\\"
            )
        else:
            out.append(character)
    if len(text) > limit:
        out.append("...")
    return "".join(out)


def _shown(value: object) -> str:
    if isinstance(value, str):
        return repr(safe_text(value, 40))
    return type(value).__name__
