"""``genv usage serve --usage``: the host side of ``genv remote monitor`` and ``genv remote top``.

Started once per host on a persistent SSH session (genv.remote.channel.AgentChannel, as the
enforcement agent is), it answers ``{"op": "usage"}`` with this host's usage view, read by
the very code of ``genv monitor`` (LocalSource: kept open, so a process already read is not
read again) — or, when asked for changes only and nothing but the time changed, with
``same``. It answers nothing else: it never acts, so monitoring needs no more than the
right to look (as root through ``sudo -n`` it sees every process's environment; as the login
user, other users' processes show as ``unknown``, as in ``genv top``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from genv.backends.base import BackendError
from genv.metrics.local import LocalSource
from genv.metrics.usage import HostUsage
from genv.metrics.usage_wire import encode_usage
from genv.store import StoreError

USAGE = "usage"


class UsageAgent:
    serves: tuple[str, ...] = (USAGE,)

    def __init__(self, source: LocalSource | None = None) -> None:
        self.source = source if source is not None else LocalSource()
        self._last: HostUsage | None = None

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        answer: dict[str, Any]
        if op == USAGE:
            answer = self.usage(full=request.get("full") is not False)
        else:
            answer = {
                "error": f"unknown request {str(op)[:40]!r}: this agent only answers usage "
                "(genv usage serve --usage)"
            }
        answer["op"] = op if isinstance(op, str) else None
        answer["id"] = request.get("id")
        return answer

    def usage(self, full: bool) -> dict[str, Any]:
        try:
            usage = self.source.read()
        except (BackendError, StoreError) as error:
            self._last = None
            return {"error": f"cannot read this host: {error}"}
        unchanged = (
            self._last is not None
            and dataclasses.replace(usage, time=self._last.time) == self._last
        )
        self._last = usage
        if unchanged and not full:
            return {"same": True, "time": usage.time}
        return {"usage": encode_usage(usage)}

    def next_deadline(self) -> float | None:
        return None

    def tick(self) -> None:
        """Nothing happens between requests."""

    def close(self) -> None:
        self.source.close()
