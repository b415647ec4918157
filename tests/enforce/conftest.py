"""Fixtures for the enforcement tests: a simulated machine, real processes, real users.

- ``machine``: the fake GPU backend's machine file in a shared folder under /tmp (mode 1777,
  so that processes of other users reach it), written atomically so that a running daemon
  never reads half of it.
- ``procs``: real ``sleep`` (or other) processes, optionally as another Linux user and with
  given environment variables; reaped, so that terminated ones do not linger as zombies.
- ``genv``: runs ``genv`` as a subprocess against that machine and state folder, as a
  one-shot command or as a background daemon; or as another user in a forked child.
- ``users``: the session's two real Linux users (``linux_users`` of tests/conftest.py), by
  role (root only; tests that need them are skipped otherwise).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from genv.backends.machine_file import write_machine

from enforce_helpers import json_lines

IS_ROOT = os.geteuid() == 0
ALICE = "alice"
BOB = "bob"
SLEEP = shutil.which("sleep") or "/bin/sleep"
PATH = "/usr/local/bin:/usr/bin:/bin"


# -- users ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@pytest.fixture(scope="session")
def users(linux_users):
    """The session's two real users (tests/conftest.py's ``linux_users``), by role."""
    from genv.system import users as genv_users

    genv_users.forget()  # names looked up before they existed
    return {ALICE: linux_users.alice, BOB: linux_users.bob}


@pytest.fixture
def alice(users) -> User:
    return users[ALICE]


@pytest.fixture
def bob(users) -> User:
    return users[BOB]


ROOT_USER = User("root", 0, 0)
CYCLE_LINE = "cycle done in"  # what the daemon logs at the end of a cycle, at debug level


# -- the shared folder and the simulated machine -------------------------------------------


@pytest.fixture
def shared_dir():
    """A folder under /tmp every user can reach (mode 1777), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="genvenf-", dir="/tmp"))
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Machine:
    """The fake backend's machine file: devices and GPU processes (pid, device, memory)."""

    def __init__(self, path: Path, devices: tuple[str, ...] = ("80gi",)) -> None:
        self.path = path
        self.devices = list(devices)
        self.processes: list[dict] = []
        self.write()

    def add(self, pid: int, device: int = 0, memory: str = "7295mi") -> None:
        self.processes.append({"pid": pid, "device": device, "used_memory": memory})
        self.write()

    def add_many(self, placements: list[tuple[int, int, str]]) -> None:
        """(pid, device, memory) for each: one write for them all."""
        self.processes.extend(
            {"pid": pid, "device": device, "used_memory": memory}
            for pid, device, memory in placements
        )
        self.write()

    def remove(self, pid: int) -> None:
        self.processes = [p for p in self.processes if p["pid"] != pid]
        self.write()

    def set_devices(self, *devices: str) -> None:
        self.devices = list(devices)
        self.write()

    def write(self) -> None:
        write_machine(self.path, [{"total_memory": total} for total in self.devices],
                      self.processes)


@pytest.fixture
def machine(shared_dir) -> Machine:
    return Machine(shared_dir / "machine.json", devices=("80gi", "80gi"))


@pytest.fixture
def state_dir(shared_dir) -> Path:
    path = shared_dir / "state"
    path.mkdir(mode=0o1777)
    path.chmod(0o1777)  # the admin's install step (docs/security.md)
    return path


# -- processes -----------------------------------------------------------------------------


class Procs:
    """Real processes started by a test; killed and reaped at its end."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.started: list[subprocess.Popen] = []

    def start(
        self,
        argv: list[str] | None = None,
        user: User | None = None,
        env: dict[str, str] | None = None,
        eid: str | None = None,
        ready: str | None = None,
        ignore_sigterm: bool = False,
        pause: bool = True,
    ) -> subprocess.Popen:
        """Start ``argv`` (default ``sleep 300``) as ``user`` with ``env``; ``eid`` sets
        GENV_ENVIRONMENT_ID. With ``ready``, wait until the process prints that line. With
        ``ignore_sigterm`` it ignores SIGTERM from its start (an ignored signal stays ignored
        across exec), so only SIGKILL ends it."""
        environment = {"PATH": PATH, "LANG": "C.UTF-8"}
        if eid is not None:
            environment["GENV_ENVIRONMENT_ID"] = eid
        environment.update(env or {})
        kwargs: dict = {}
        if user is not None and user.uid != os.geteuid():
            kwargs.update(user=user.uid, group=user.gid, extra_groups=[])
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN) if ignore_sigterm else None
        try:
            process = subprocess.Popen(
                argv or [SLEEP, "300"],
                env=environment,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if ready else subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
                **kwargs,
            )
        finally:
            if ignore_sigterm:
                signal.signal(signal.SIGTERM, previous)
        self.started.append(process)
        if ready:
            line = process.stdout.readline().strip()
            assert line == ready, f"process {process.pid} said {line!r}, not {ready!r}"
        # create_time has a resolution of one clock tick: keep the processes of a test
        # strictly ordered, oldest first, as the rules choose the newest ones
        if pause:
            time.sleep(0.03)
        return process

    @staticmethod
    def alive(process: subprocess.Popen) -> bool:
        return process.poll() is None

    @staticmethod
    def wait_dead(process: subprocess.Popen, timeout: float = 5.0) -> bool:
        """Reap ``process``; whether it died within ``timeout`` seconds."""
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def cleanup(self) -> None:
        for process in self.started:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            if process.stdout is not None:
                process.stdout.close()


@pytest.fixture
def procs(shared_dir):
    started = Procs(shared_dir)
    try:
        yield started
    finally:
        started.cleanup()


# -- running genv --------------------------------------------------------------------------


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def _wants_json(args: tuple[str, ...]) -> bool:
    return any(a == "--log-format" and b == "json" for a, b in zip(args, args[1:], strict=False))


@dataclass
class Daemon:
    """``genv enforce`` running in the background, its output going to files. With
    ``--log-format json``, every line it wrote is checked against docs/log-schema.json when
    it is stopped or closed."""

    process: subprocess.Popen
    out: Path
    err: Path
    files: list = field(default_factory=list)
    json: bool = False

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    @property
    def lines(self) -> list[str]:
        return self.stdout().splitlines()

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_for(self, text: str, where: str = "stdout", timeout: float = 10.0,
                 count: int = 1) -> str:
        """Wait until ``text`` appears ``count`` times in stdout (or stderr)."""
        deadline = time.monotonic() + timeout
        while True:
            content = self.stdout() if where == "stdout" else self.stderr()
            if content.count(text) >= count:
                return content
            if not self.running():
                raise AssertionError(
                    f"the daemon exited ({self.process.returncode}) before {text!r} appeared:\n"
                    f"stdout:\n{self.stdout()}\nstderr:\n{self.stderr()}"
                )
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{text!r} did not appear in {where} within {timeout}s:\n"
                    f"stdout:\n{self.stdout()}\nstderr:\n{self.stderr()}"
                )
            time.sleep(0.05)

    def wait_cycles(self, cycles: int = 1, timeout: float = 10.0) -> None:
        """Wait until the daemon has run ``cycles`` more cycles (it must have been started
        with ``--log-level debug``, which logs one line a cycle): to let cycles pass without
        sleeping for a guess of how long they take."""
        done = self.stderr().count(CYCLE_LINE)
        self.wait_for(CYCLE_LINE, where="stderr", timeout=timeout, count=done + cycles)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        for handle in self.files:
            handle.close()
        if self.files and self.json:
            json_lines(self.stdout())
        self.files.clear()


def _preload_genv() -> None:
    """Import what ``genv enforce``, ``genv envs`` and ``genv devices`` need, so that a forked
    child that gave up root (and with it the interpreter's folder, which may be private)
    needs no further imports."""
    import secrets  # noqa: F401 - the store's writers import it when they first write
    import shutil  # noqa: F401

    import genv.backends.choose  # noqa: F401
    import genv.backends.fake  # noqa: F401
    import genv.cli.daemon_logs  # noqa: F401 - set up at the first record it logs
    import genv.cli.devices  # noqa: F401
    import genv.cli.enforce  # noqa: F401
    import genv.cli.envs  # noqa: F401
    import genv.cli.main
    import genv.enforce.daemon  # noqa: F401
    import genv.enforce.executor  # noqa: F401
    import genv.enforce.observe  # noqa: F401
    import genv.enforce.report  # noqa: F401
    import genv.enforce.rules  # noqa: F401
    import genv.store  # noqa: F401

    genv.cli.main.build_parser("enforce")


class Genv:
    def __init__(self, shared_dir: Path, machine: Machine, state_dir: Path) -> None:
        self.shared_dir = shared_dir
        self.machine = machine
        self.env = {
            key: value for key, value in os.environ.items() if not key.startswith("GENV_")
        }
        self.env.update(
            GENV_TMPDIR=str(state_dir),
            GENV_GPU_BACKEND="fake",
            GENV_FAKE_MACHINE=str(machine.path),
            PYTHONDONTWRITEBYTECODE="1",
        )
        self.daemons: list[Daemon] = []
        self._count = 0

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "genv", *args]

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> Result:
        done = subprocess.run(
            self.command(*args), env=self.env, capture_output=True, text=True,
            timeout=timeout, cwd=self.shared_dir, stdin=subprocess.DEVNULL,
        )
        result = Result(done.returncode, done.stdout, done.stderr)
        if _wants_json(args) and done.returncode == 0:
            json_lines(done.stdout)
        if check:
            assert done.returncode == 0, (
                f"genv {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )
        return result

    def enforce(self, *args: str, timeout: float = 30) -> Result:
        """``genv enforce --interval 0 ARGS``: one cycle."""
        result = self.run("enforce", "--interval", "0", *args, check=False, timeout=timeout)
        assert result.rc == 0, f"genv enforce failed ({result.rc}):\n{result.stderr}"
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def start(self, *args: str, open_files: int | None = None) -> Daemon:
        """``genv enforce ARGS`` in the background; ``open_files`` starts it with that soft
        limit of open descriptors (RLIMIT_NOFILE)."""
        self._count += 1
        out = self.shared_dir / f"daemon{self._count}.out"
        err = self.shared_dir / f"daemon{self._count}.err"
        out_file, err_file = open(out, "w"), open(err, "w")  # noqa: SIM115
        preexec = None
        if open_files is not None:
            def preexec() -> None:
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, hard))
        process = subprocess.Popen(
            self.command("enforce", *args), env=self.env, stdout=out_file, stderr=err_file,
            stdin=subprocess.DEVNULL, cwd=self.shared_dir, preexec_fn=preexec,
        )
        daemon = Daemon(process, out, err, [out_file, err_file], json=_wants_json(args))
        self.daemons.append(daemon)
        return daemon

    def run_as(self, user: User, *args: str, timeout: float = 30) -> Result:
        """``genv ARGS`` as ``user``, in a forked child that gave up root.

        A subprocess would not do: the interpreter may live in a folder only root can enter.
        The child imports nothing after giving up root (see _preload_genv).
        """
        _preload_genv()
        from genv.cli.main import main
        from genv.system import users as genv_users

        self._count += 1
        out = self.shared_dir / f"as-{user.name}{self._count}.out"
        err = self.shared_dir / f"as-{user.name}{self._count}.err"
        out_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err_fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.dup2(out_fd, 1)
                os.dup2(err_fd, 2)
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                logging.root.handlers.clear()  # pytest's: let genv configure its own
                os.chdir(self.shared_dir)
                os.environ.clear()
                os.environ.update(self.env)
                genv_users.forget()
                os.setgroups([])
                os.setgid(user.gid)
                os.setuid(user.uid)
                code = int(main(list(args)) or 0)
            except SystemExit as error:
                code = error.code if isinstance(error.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        os.close(out_fd)
        os.close(err_fd)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"genv {' '.join(args)} as {user.name} did not finish")
            time.sleep(0.02)
        result = Result(os.waitstatus_to_exitcode(status), out.read_text(), err.read_text())
        if _wants_json(args) and result.rc == 0:
            json_lines(result.stdout)
        return result

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.close()

    # -- environments --------------------------------------------------------------------

    def activate(self, eid: str, shell: subprocess.Popen, user: User = ROOT_USER) -> None:
        """Register ``shell`` (the environment's shell, say) in a new environment ``eid``."""
        self.run("envs", "activate", "--eid", eid, "--uid", str(user.uid),
                 "--username", user.name, "--pid", str(shell.pid))

    def attach(self, eid: str, index: int | None = None, count: int | None = None) -> str:
        args = ["devices", "attach", "--eid", eid]
        if index is not None:
            args += ["--index", str(index)]
        if count is not None:
            args += ["--count", str(count)]
        return self.run(*args).stdout.strip()

    def devices(self) -> list[str]:
        return self.run("devices").stdout.splitlines()

    def attachments(self) -> list[tuple[str, str]]:
        """(index, eid) of every attachment, from ``genv devices --format csv``."""
        # (root's listing exits 1 while some state file is unusable; it still lists)
        done = self.run("devices", "ps", "--format", "csv", "--no-header", check=False)
        assert "Traceback" not in done.stderr, done.stderr
        rows = done.stdout.splitlines()
        found = []
        for row in rows:
            index, _, rest = row.partition(",")
            eid = rest.split(",")[0] if rest else ""
            if eid:
                found.append((index, eid))
        return found


@pytest.fixture
def genv(shared_dir, machine, state_dir):
    runner = Genv(shared_dir, machine, state_dir)
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture
def env_of(genv, procs):
    """Create an environment: its shell (a registered ``sleep`` that is not on any GPU),
    optionally configured and attached; returns the shell process."""

    def make(eid: str, user: User = ROOT_USER, attach: list[int] | tuple[int, ...] = (0,),
             gpu_memory: str | None = None) -> subprocess.Popen:
        shell = procs.start(user=user, eid=eid)
        genv.activate(eid, shell, user)
        if gpu_memory is not None:
            genv.run("envs", "config", "--eid", eid, "gpu-memory", "--gpu-memory", gpu_memory)
        for index in attach:
            genv.attach(eid, index=index)
        return shell

    return make
