"""Helpers the tests of several folders share (on the test path through pyproject)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# -- state files written by hand -------------------------------------------------------------


def encode_records(uid: int, environments: Sequence[Any], attachments: Sequence[Any] = ()) -> bytes:
    """A state file's bytes for ``uid``, as genv would write them on this boot."""
    from genv.domain.models import UserRecords
    from genv.store import codec
    from genv.system import procfs

    records = UserRecords(uid, tuple(environments), tuple(attachments))
    return codec.encode(records, procfs.boot_id())


def start_of(pid: int) -> int:
    """The start of a running process, as genv records it (ticks since boot)."""
    from genv.system import procfs

    start = procfs.start_of(pid)
    assert start is not None, f"process {pid} is not running"
    return start


def wait_environ(pid: int, timeout: float = 10.0) -> None:
    """Readiness: until the kernel shows the new program's environment (a moment after exec,
    /proc/PID/environ still reads empty). Processes started for a test set some variable."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/environ", "rb") as file:
                if file.read(1):
                    return
        except OSError:
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} never showed its environment")


def wait_cmdline(pid: int, text: str, timeout: float = 10.0) -> None:
    """Readiness: until the kernel shows the new program's command line (right after exec it
    may still show the old one, or nothing)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                if text.encode() in file.read():
                    return
        except OSError:
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} never showed {text!r} on its command line")
