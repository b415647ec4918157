"""``genv top``'s loop: read the machine every ``interval`` seconds, redraw, answer keys.

In a terminal it takes the whole screen (rich's Live on the alternate screen) and reads keys
one at a time (cbreak mode, restored on the way out); otherwise it prints one plain frame.
The enforcer's page is read in a thread of its own, so a slow daemon never stalls the view.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator
from dataclasses import replace

from rich.console import Console

from genv.errors import GenvError
from genv.metrics import scrape
from genv.metrics.source import HostSample, Source
from genv.top.model import ViewOptions
from genv.top.render import screen

ESCAPE, ENTER, BACKSPACE = "\x1b", ("\r", "\n"), ("\x7f", "\x08")


class EnforcerPoller:
    """The daemon's latest status, fetched every ``interval`` seconds in the background."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.status: scrape.EnforcerStatus = scrape.EnforcerStatus(url, error="not read yet")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="genv-top-enforcer", daemon=True)

    def start(self) -> EnforcerPoller:
        self.status = scrape.fetch(self.url, timeout=min(2.0, max(self.interval, 0.5)))
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.status = scrape.fetch(self.url, timeout=min(2.0, max(self.interval, 0.5)))

    def stop(self) -> None:
        self._stop.set()


class Top:
    def __init__(
        self,
        source: Source,
        interval: float,
        enforcer: EnforcerPoller | None = None,
        options: ViewOptions | None = None,
    ) -> None:
        self.source = source
        self.interval = interval
        self.enforcer = enforcer
        self.options = options or ViewOptions()
        self.samples: list[HostSample] = []
        self.prompt: str | None = None  # the user name being typed, while ``u`` asks for one
        self.done = False

    def refresh(self) -> None:
        try:
            self.samples = self.source.collect()
        except GenvError as error:
            self.samples = [HostSample(None, None, error=str(error))]

    def frame(self):  # noqa: ANN201 - a rich renderable
        status = self.enforcer.status if self.enforcer is not None else None
        return screen(self.samples, self.options, status, self.prompt)

    # -- keys -----------------------------------------------------------------------------

    def key(self, key: str) -> None:
        if self.prompt is not None:
            if key in ENTER:
                typed = self.prompt.strip()
                self.options = replace(self.options, user=typed or None)
                self.prompt = None
            elif key == ESCAPE:
                self.prompt = None
            elif key in BACKSPACE:
                self.prompt = self.prompt[:-1]
            elif key.isprintable() and len(self.prompt) < 64:
                self.prompt += key
            return
        if key in ("q", "Q"):
            self.done = True
        elif key == "s":
            self.options = self.options.next_sort()
        elif key == "u":
            self.prompt = ""
        elif key in ("a", ESCAPE):
            self.options = replace(self.options, user=None)

    # -- running ----------------------------------------------------------------------------

    def print_once(self, console: Console) -> None:
        self.refresh()
        console.print(self.frame())

    def run(self, console: Console) -> None:
        """Until ``q`` (or Ctrl-C): redraw every ``interval`` seconds and after each key."""
        from rich.live import Live

        stdin = sys.stdin.fileno() if sys.stdin.isatty() else None
        with (
            _cbreak(stdin),
            Live(console=console, screen=True, auto_refresh=False, redirect_stderr=False) as live,
        ):
            due = 0.0
            while not self.done:
                now = time.monotonic()
                if now >= due:
                    self.refresh()
                    due = now + self.interval
                live.update(self.frame(), refresh=True)
                for key in _keys(stdin, max(0.0, due - time.monotonic())):
                    self.key(key)


@contextlib.contextmanager
def _cbreak(fd: int | None) -> Iterator[None]:
    """Keys one at a time, without echo; the terminal as it was on the way out."""
    if fd is None:
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _keys(fd: int | None, timeout: float) -> list[str]:
    """The keys typed within ``timeout`` seconds (an escape sequence, such as an arrow key,
    comes back as one Escape)."""
    if fd is None:
        time.sleep(timeout)
        return []
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return []
    data = os.read(fd, 256).decode("utf-8", errors="replace")
    if not data:  # the terminal went away
        return ["q"]
    if data.startswith(ESCAPE) and len(data) > 1:
        return [ESCAPE]
    return list(data)
