"""User names and ids from the system's user database (passwd, LDAP, ...).

Only answers are remembered: a lookup that fails (an LDAP or NSS hiccup) is asked again next
time, so that one failure never becomes a permanent "no such user".
"""

from __future__ import annotations

import pwd

from genv.domain import validate

_names: dict[int, str] = {}


def username(uid: int) -> str | None:
    name = _names.get(uid)
    if name is not None:
        return name
    try:
        name = pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None
    if len(_names) < 65536:
        _names[uid] = name
    return name


def uid_of(name: str) -> int | None:
    """The uid of user ``name`` (or of a numeric uid given as text), None when unknown."""
    try:
        return pwd.getpwnam(name).pw_uid
    except (KeyError, ValueError):  # ValueError: a NUL in the name, which no user has
        pass
    if validate.decimal(name) and len(name) <= 10:
        return int(name)
    return None


def forget() -> None:
    """Drop what was remembered (tests that create users)."""
    _names.clear()
