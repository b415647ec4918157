"""The names of genv's files in the shared state folder, and telling planted ones apart.

In a folder every user can write to, anyone can create any name first: a file, a folder or a
link called ``state-1001.json`` made by user 1002 would lock user 1001 out, since in a sticky
folder only its creator (or root) can remove it. So each user's file and lock have a few
candidate names, tried in order: the first that is free or rightfully owned is used, names
that someone else planted are skipped (and removed by root), and a user is never locked out
unless every candidate is planted.

A name is rightfully owned when it is a regular file owned by the uid in its name: only that
user, or root, can create such a file (root gives what it writes for a user to that user).
"""

from __future__ import annotations

import functools
import os
import re
import stat

from genv.domain import constants
from genv.domain.values import value

CANDIDATES = 8  # names per user and kind: the canonical one, then ~1 .. ~7

_PATTERN = re.compile(
    r"^(?:state-(?P<suid>0|[1-9][0-9]{0,9})(?:~(?P<sk>[1-7]))?\.json"
    r"|\.lock-(?P<luid>0|[1-9][0-9]{0,9})(?:~(?P<lk>[1-7]))?)$"
)

STATE = "state"
LOCK = "lock"


@value
class OurName:
    kind: str  # STATE or LOCK
    uid: int
    rank: int  # 0 for the canonical name, 1..7 for the fallbacks


def state_name(uid: int, rank: int = 0) -> str:
    return f"state-{uid}.json" if rank == 0 else f"state-{uid}~{rank}.json"


def lock_name(uid: int, rank: int = 0) -> str:
    return f".lock-{uid}" if rank == 0 else f".lock-{uid}~{rank}"


@functools.lru_cache(maxsize=4096)  # asked for every user on every read of the daemon
def state_names(uid: int) -> tuple[str, ...]:
    return tuple(state_name(uid, rank) for rank in range(CANDIDATES))


def lock_names(uid: int) -> tuple[str, ...]:
    return tuple(lock_name(uid, rank) for rank in range(CANDIDATES))


def parse(name: str) -> OurName | None:
    """Which of genv's names ``name`` is, or None for any other file."""
    match = _PATTERN.match(name)
    if match is None:
        return None
    if match.group("suid") is not None:
        kind, uid, rank = STATE, int(match.group("suid")), match.group("sk")
    else:
        kind, uid, rank = LOCK, int(match.group("luid")), match.group("lk")
    if uid > constants.MAX_UID:
        return None
    return OurName(kind, uid, int(rank) if rank else 0)


def rightful(info: os.stat_result, uid: int, kind: str) -> bool:
    """Whether a file with status ``info`` under a name of ``uid`` belongs there.

    State files may also be root's (root wrote them and could not give them away); lock files
    must be the user's own, since a lock only root can open would lock the user out.
    """
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        return False  # (another name for the same file could be someone else's doing)
    return not planted(info, uid, kind)


def planted(info: os.stat_result, uid: int, kind: str) -> bool:
    """Whether someone other than ``uid`` (or root) made the name: it tells nothing about
    ``uid``. Anything else under the name that is not a regular file is its owner's doing."""
    if kind == LOCK:
        return info.st_uid != uid
    return info.st_uid not in (uid, 0)
