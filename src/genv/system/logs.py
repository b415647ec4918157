"""genv's loggers, with the logging module imported only when something is logged.

``logging`` (with ``traceback``, ``threading``, ``string``, ...) takes milliseconds to import,
which every quick command would pay, though it seldom has anything to say. So every module
of genv gets its logger here, ``log = logs.logger("genv.store")``: an object that stands for
``logging.getLogger(name)`` and imports logging on first use.

A front end that shows genv's warnings its own way (``genv``: ``genv: warning: ...`` lines)
registers how with ``when_used``: the set-up runs once, before the first record. A front end
that then configures logging itself (a daemon's format, a quieter level) calls ``settle``
first, so that a pending set-up never runs after, and undoes, its own; or hands its set-up
to ``instead`` with the level it sets, so that a run with nothing to say at that level (one
cycle of ``genv enforce``) never imports logging (about 8 ms).
"""

from __future__ import annotations

import _thread  # (threading would cost every quick command its import)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable
    from typing import Any

# logging's levels, by the names front ends take them by (``--log-level``).
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR}

_pending: list[Callable[[], None]] = []
_settling = _thread.RLock()  # two threads logging first at once: one runs the set-ups
_below = 0  # until the set-ups have run: records under this level are dropped unseen


def logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, imported and looked up when it is first used."""
    return _Logger(name)  # type: ignore[return-value]  # every Logger attribute, forwarded


def when_used(setup: Callable[[], None]) -> None:
    """Run ``setup`` (which configures logging) before the first record of any of genv's
    loggers, or when ``settle`` is called."""
    _pending.append(setup)


def instead(setup: Callable[[], None], level: int) -> None:
    """Make ``setup`` the way genv logs, in place of the set-ups still pending, run before
    the first record at ``level`` or above of any of genv's loggers (or on ``settle``).
    ``setup`` must make ``level`` the threshold: a record under it, until then, is dropped
    without importing logging, as logging would drop it then."""
    global _below
    with _settling:
        _pending.clear()
        _pending.append(setup)
        _below = level


def settle() -> None:
    """Run the set-ups still pending now (before configuring logging in another way)."""
    global _below
    with _settling:
        while _pending:
            _pending.pop(0)()
        _below = 0  # from here on logging's own levels decide


class _Logger:
    __slots__ = ("_name", "_logger")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: logging.Logger | None = None

    def __getattr__(self, attribute: str) -> object:
        return getattr(self._real(), attribute)

    def _real(self) -> logging.Logger:
        if _pending:  # a set-up given since (``instead``, ``when_used``) runs first
            settle()
        found = self._logger
        if found is None:  # the first use: the real logger, kept
            import logging

            found = self._logger = logging.getLogger(self._name)
        return found

    # The calls a quiet run makes, answered without logging while ``_below`` says so.

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's name
        return level >= _below and self._real().isEnabledFor(level)

    def debug(self, message: object, *args: object, **kwargs: Any) -> None:
        if _below <= DEBUG:
            self._real().debug(message, *args, **_caller(kwargs))

    def info(self, message: object, *args: object, **kwargs: Any) -> None:
        if _below <= INFO:
            self._real().info(message, *args, **_caller(kwargs))

    def __repr__(self) -> str:
        return f"<genv logger {self._name!r}>"


def _caller(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The record names the caller of ``_Logger.debug`` (or ``info``), not that method."""
    stacklevel = kwargs.get("stacklevel", 1)
    kwargs["stacklevel"] = (stacklevel if isinstance(stacklevel, int) else 1) + 1
    return kwargs
