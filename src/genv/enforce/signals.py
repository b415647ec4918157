"""Stopping the daemon on SIGTERM or SIGINT within moments, whatever it is doing.

A signal handler must not take a lock (the interrupted code may hold it: ``threading.Event.set``
takes one), so the handlers only set a plain attribute. The loop sleeps in ``poll`` on a pipe
that the interpreter writes the signal number into (``signal.set_wakeup_fd``) and on the
descriptors of the processes it waits for, so a signal wakes it at once. While the daemon only
reads (its observation: GPUs, state files, /proc), the handler also raises ``Interrupted``, so
that a slow reading (nvidia-smi may take seconds) does not delay the stop; nothing is changed
in that phase, so nothing is left half done. SIGHUP is noted and ignored: a terminal that
closes or a log rotation must not end enforcement.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """Raised by the stop handler inside ``Stopper.interruptible``: the reading is given up.

    A BaseException, so that no ``except Exception`` on the way swallows it.
    """


class Stopper:
    """The stop request (a flag, set by signal or by ``request_stop``) and the loop's sleep."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the stop signal received; 0 for request_stop
        self.hangups = 0  # SIGHUPs received (ignored), for the loop to log
        self._interruptible = False
        self._read: int | None = None
        self._write: int | None = None
        self._installed: dict[int, object] = {}
        self._old_wakeup: int | None = None
        self._poller: select.poll | None = None  # the sleep's, kept while its descriptors are
        self._polled: tuple[int, int | None] | None = None

    # -- the pipe ----------------------------------------------------------------------

    def _pipe(self) -> tuple[int, int]:
        if self._read is None or self._write is None:
            self._read, self._write = os.pipe()
            for fd in (self._read, self._write):
                os.set_blocking(fd, False)
                os.set_inheritable(fd, False)
        return self._read, self._write

    # -- signals -----------------------------------------------------------------------

    def install(self) -> None:
        """Handle SIGTERM, SIGINT and SIGHUP (main thread only: the interpreter's rule)."""
        _, write = self._pipe()
        self._old_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            self._installed[signum] = signal.signal(signum, self._on_stop)
        self._installed[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        # No lock, no allocation worth speaking of, no I/O: attributes only.
        self.signum = signum
        if self._interruptible:
            self._interruptible = False
            raise Interrupted

    def _on_hangup(self, signum: int, frame: FrameType | None) -> None:
        self.hangups += 1

    def request_stop(self) -> None:
        """Stop as a signal would (from the loop's own thread, e.g. in tests)."""
        if self.signum is None:
            self.signum = 0
        _, write = self._pipe()
        with contextlib.suppress(BlockingIOError):  # full: it will wake anyway
            os.write(write, b"\0")

    @property
    def stopping(self) -> bool:
        return self.signum is not None

    def interruptible(self) -> Stopper:
        """A stop signal during the ``with`` block raises Interrupted (only around reading).
        (The Stopper is its own context manager: no generator to make each cycle.)"""
        return self

    def __enter__(self) -> None:
        if self.stopping:
            raise Interrupted
        self._interruptible = True

    def __exit__(self, *_: object) -> None:
        self._interruptible = False

    # -- sleeping ----------------------------------------------------------------------

    def wait(self, timeout: float | None, fd: int | None = None) -> None:
        """Sleep until ``timeout`` seconds passed (None: no limit), a stop or hang-up signal
        came, or ``fd`` became readable (the processes being waited for: an epoll)."""
        read, _ = self._pipe()
        if self.stopping:
            return
        if self._poller is None or self._polled != (read, fd):
            self._poller = select.poll()  # never select(): descriptors may be above 1024
            self._poller.register(read, select.POLLIN)
            if fd is not None:
                self._poller.register(fd, select.POLLIN)
            self._polled = (read, fd)
        milliseconds = None if timeout is None else max(0, math.ceil(timeout * 1000))
        if any(ready == read for ready, _ in self._poller.poll(milliseconds)):
            self._drain(read)  # (only then: a read of an empty pipe fails, at a cost)

    @staticmethod
    def _drain(fd: int) -> None:
        while True:
            try:
                if not os.read(fd, 512):
                    return
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno == errno.EINTR:
                    continue
                return

    # -- the end -----------------------------------------------------------------------

    def close(self) -> None:
        """Put back the handlers and the wake-up descriptor found; close the pipe."""
        if self._installed:
            for signum, handler in self._installed.items():
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(signum, handler)  # type: ignore[arg-type]
            self._installed.clear()
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(self._old_wakeup if self._old_wakeup is not None else -1)
        for fd in (self._read, self._write):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._read = self._write = None
        self._poller = self._polled = None
