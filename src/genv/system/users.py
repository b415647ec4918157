"""User names and ids, looked up once per process."""

from __future__ import annotations

import functools
import pwd


@functools.lru_cache(maxsize=4096)
def username(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@functools.lru_cache(maxsize=4096)
def uid_of(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None
