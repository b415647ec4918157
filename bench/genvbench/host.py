"""The real parts of the simulated machine: Linux users, ``sleep`` processes, limits, facts."""

from __future__ import annotations

import contextlib
import os
import platform
import pwd
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

SLEEP = shutil.which("sleep") or "/bin/sleep"
USER_PREFIX = "genvbench"
MIN_PID_MAX = 32768


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _userdel(name: str) -> None:
    if _user_exists(name):
        subprocess.run(["userdel", name], check=False, capture_output=True)


@contextlib.contextmanager
def bench_users(count: int, prefix: str = USER_PREFIX) -> Iterator[list[User]]:
    """``count`` fresh users (``genvbench0``...), deleted on the way out, failure or not."""
    names = [f"{prefix}{index}" for index in range(count)]
    try:
        users = []
        for name in names:
            _userdel(name)  # left over from an interrupted run
            subprocess.run(["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", name],
                           check=True, capture_output=True)
            entry = pwd.getpwnam(name)
            users.append(User(name, entry.pw_uid, entry.pw_gid))
        yield users
    finally:
        for name in names:
            _userdel(name)


def raise_limits(processes: int) -> None:
    """Room for thousands of processes: open files for the daemons' pidfds, and pids."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(soft, processes * 2 + 1024)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        hard = wanted  # root may raise the hard limit
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    pid_max = Path("/proc/sys/kernel/pid_max")
    with contextlib.suppress(OSError, ValueError):
        if int(pid_max.read_text()) < max(MIN_PID_MAX, processes * 4):
            pid_max.write_text(str(max(MIN_PID_MAX, processes * 4)))


@dataclass
class Sleeper:
    """One ``sleep`` of a user, claiming an environment (or none)."""

    process: subprocess.Popen[bytes]
    user: User
    eid: str | None

    @property
    def pid(self) -> int:
        return self.process.pid


class ProcessPool:
    """Starts ``sleep`` processes as other users, and kills and reaps every one of them."""

    def __init__(self) -> None:
        self._sleepers: list[Sleeper] = []

    def start(self, user: User, eid: str | None) -> Sleeper:
        env = {"PATH": "/usr/bin:/bin"}
        if eid is not None:
            env["GENV_ENVIRONMENT_ID"] = eid
        process = subprocess.Popen(  # noqa: S603 - a fixed program
            [SLEEP, "100000"],
            env=env,
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
        )
        sleeper = Sleeper(process, user, eid)
        self._sleepers.append(sleeper)
        return sleeper

    def stop(self, sleepers: Iterable[Sleeper]) -> None:
        """Kill and reap these; they leave the pool."""
        chosen = list(sleepers)
        for sleeper in chosen:
            with contextlib.suppress(ProcessLookupError):
                sleeper.process.send_signal(signal.SIGKILL)
        for sleeper in chosen:
            sleeper.process.wait()
        ids = {id(sleeper) for sleeper in chosen}
        self._sleepers = [s for s in self._sleepers if id(s) not in ids]

    def stop_all(self) -> None:
        self.stop(list(self._sleepers))


def fd_wait(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` exits within ``timeout`` seconds (a pidfd; no reaping)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def machine_facts() -> dict[str, str]:
    """What the report says about the machine the numbers come from."""
    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": f"{_memory_gib():.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()} "
                  f"({sys.executable})",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
