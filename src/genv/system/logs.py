"""genv's loggers, with the logging module imported only when something is logged.

``logging`` (with ``traceback``, ``threading``, ``string``, ...) takes milliseconds to import,
which every quick command would pay, though it seldom has anything to say. So every module
of genv gets its logger here, ``log = logs.logger("genv.store")``: an object that stands for
``logging.getLogger(name)`` and imports logging on first use.

A front end that shows genv's warnings its own way (``genv``: ``genv: warning: ...`` lines)
registers how with ``when_used``: the set-up runs once, before the first record. A front end
that then configures logging itself (a daemon's format, a quieter level) calls ``settle``
first, so that a pending set-up never runs after, and undoes, its own.
"""

from __future__ import annotations

import _thread  # (threading would cost every quick command its import)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

_pending: list[Callable[[], None]] = []
_settling = _thread.RLock()  # two threads logging first at once: one runs the set-ups


def logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, imported and looked up when it is first used."""
    return _Logger(name)  # type: ignore[return-value]  # every Logger attribute, forwarded


def when_used(setup: Callable[[], None]) -> None:
    """Run ``setup`` (which configures logging) before the first record of any of genv's
    loggers, or when ``settle`` is called."""
    _pending.append(setup)


def settle() -> None:
    """Run the set-ups still pending now (before configuring logging in another way)."""
    with _settling:
        while _pending:
            _pending.pop(0)()


class _Logger:
    __slots__ = ("_name", "_logger")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: logging.Logger | None = None

    def __getattr__(self, attribute: str) -> object:
        found = self._logger
        if found is None:  # the first use: the set-ups, then the real logger, kept
            settle()
            import logging

            found = self._logger = logging.getLogger(self._name)
        return getattr(found, attribute)

    def __repr__(self) -> str:
        return f"<genv logger {self._name!r}>"
