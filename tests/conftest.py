"""Fixtures shared by every test folder.

- ``shared_tmp``: a folder under /tmp that every user can reach (mode 1777, like /tmp), removed
  at the end. pytest's own ``tmp_path`` sits under a 0700 folder other users cannot enter.
- ``fake_machine``: a simulated machine (``GENV_GPU_BACKEND=fake``) in ``shared_tmp`` with a
  fresh state folder, set in the environment through monkeypatch; 4 devices of 80gi to start.
- ``run_genv`` / ``genv_popen``: the ``genv`` command line in a subprocess, as root or as a
  test user; ``run_genv`` returns ``GenvResult(rc, out, err)``.
- ``linux_users``: two real Linux users (session-wide), removed at the end; skips when not root.
- ``run_as``: any command as one of those users.
- ``sleeper``: real ``sleep`` processes, optionally as a user and with extra environment
  variables, killed at the end.
- ``new_env``: an environment kept alive by a sleeper, created through the command line.

Test users cannot run root's Python when it lives under /root (mode 0700), so their ``genv``
runs a Python they can reach, on a copy of the ``genv`` package in a folder
they can read (``user_runtime``).
"""

from __future__ import annotations

import compileall
import contextlib
import importlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from genv.backends.machine_file import write_machine

GENV_VARIABLES = ("GENV_TMPDIR", "GENV_GPU_BACKEND", "GENV_FAKE_MACHINE",
                  "GENV_ENVIRONMENT_ID", "GENV_BYPASS")
USER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_PREFIX = "genvtest_"
COMMAND_TIMEOUT = 60
RUNTIME_PACKAGES = ("rich", "prometheus_client")


class GenvResult(NamedTuple):
    """What one ``genv`` run gave: exit status, standard output, standard error."""

    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        """Standard output, line by line."""
        return self.out.splitlines()

    @property
    def err_lines(self) -> list[str]:
        """Standard error, line by line, without empty lines."""
        return [line for line in self.err.splitlines() if line.strip()]


# -- real Linux users ------------------------------------------------------------------


@dataclass(frozen=True)
class LinuxUser:
    """A real user on this machine. ``become`` is a ``preexec_fn`` that turns into it."""

    name: str
    uid: int
    gid: int

    def become(self, umask: int | None = None) -> Callable[[], None]:
        def preexec() -> None:
            os.setgroups([])
            os.setgid(self.gid)
            os.setuid(self.uid)
            if umask is not None:
                os.umask(umask)

        return preexec


@dataclass(frozen=True)
class LinuxUsers:
    alice: LinuxUser
    bob: LinuxUser

    def __iter__(self) -> Iterator[LinuxUser]:
        return iter((self.alice, self.bob))


def _remove_user(name: str) -> None:
    subprocess.run(["userdel", name], capture_output=True, check=False)


def _remove_stale_users() -> None:
    """Users left by an earlier run that was killed: their name ends with its pid."""
    pattern = re.compile(rf"^{USER_PREFIX}(?:alice|bob)(\d+)$")
    for entry in pwd.getpwall():
        match = pattern.match(entry.pw_name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _remove_user(entry.pw_name)


def _create_user(name: str) -> LinuxUser:
    _remove_user(name)
    subprocess.run(
        ["useradd", "-M", "-N", "-s", "/bin/bash", "-c", "genv test user", name],
        check=True, capture_output=True,
    )
    entry = pwd.getpwnam(name)
    return LinuxUser(name, entry.pw_uid, entry.pw_gid)


@pytest.fixture(scope="session")
def linux_users() -> Iterator[LinuxUsers]:
    """Two real users, ``alice`` and ``bob``, created for this run and removed after it.

    Names carry this run's pid so that two test runs on one machine never share users.
    """
    if os.geteuid() != 0:
        pytest.skip("creating Linux users needs root")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("useradd/userdel are not installed")
    _remove_stale_users()
    pid = os.getpid()
    created: list[str] = []
    try:
        alice = _create_user(f"{USER_PREFIX}alice{pid}")
        created.append(alice.name)
        bob = _create_user(f"{USER_PREFIX}bob{pid}")
        created.append(bob.name)
    except subprocess.CalledProcessError as error:
        for name in created:
            _remove_user(name)
        pytest.skip(f"useradd failed: {error.stderr.decode(errors='replace').strip()}")
    try:
        yield LinuxUsers(alice, bob)
    finally:
        for name in created:
            _remove_user(name)


# -- a genv that test users can run ----------------------------------------------------


@dataclass(frozen=True)
class UserRuntime:
    """A Python interpreter and a package folder that every test user can use.

    ``bin_dir`` holds a ``genv`` script running that copy; it comes first on users' PATH.
    """

    python: str
    site: Path

    @property
    def bin_dir(self) -> Path:
        return self.site / "bin"


def _package_dir(module: Any) -> Path:
    return Path(module.__file__).resolve().parent


def _python_candidates() -> list[str]:
    candidates = [sys.executable, getattr(sys, "_base_executable", "") or ""]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for folder in ("/usr/local/bin", "/usr/bin"):
        candidates += [f"{folder}/python{version}", f"{folder}/python3"]
    seen: list[str] = []
    for candidate in candidates:
        if candidate and candidate not in seen and os.access(candidate, os.X_OK):
            seen.append(candidate)
    return seen


@pytest.fixture(scope="session")
def user_runtime(linux_users: LinuxUsers) -> Iterator[UserRuntime]:
    """Copy genv and its runtime dependencies where users can read them; pick a Python."""
    import genv

    site = Path(tempfile.mkdtemp(prefix="genvtest-site-", dir="/tmp"))
    try:
        site.chmod(0o755)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(_package_dir(genv), site / "genv", ignore=ignore)
        for package in RUNTIME_PACKAGES:  # genv's other dependencies (genv top, metrics)
            with contextlib.suppress(ImportError):
                module = importlib.import_module(package)
                shutil.copytree(_package_dir(module), site / package, ignore=ignore)
        compileall.compile_dir(str(site), quiet=1)
        for folder, _, files in os.walk(site):
            os.chmod(folder, 0o755)
            for name in files:
                path = os.path.join(folder, name)
                executable = os.stat(path).st_mode & 0o111
                os.chmod(path, 0o755 if executable else 0o644)  # shims stay executable
        probe = "import genv.cli.main, genv.store, genv.backends.fake"
        reasons = []
        for python in _python_candidates():
            try:
                result = subprocess.run(
                    [python, "-c", probe],
                    env=_user_environment(site, {}),
                    preexec_fn=linux_users.alice.become(),
                    cwd="/", capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                    check=False,
                )
            except OSError as error:  # e.g. root's Python under /root, mode 0700
                reasons.append(f"{python}: {error.strerror}")
                continue
            if result.returncode == 0:
                bin_dir = site / "bin"
                bin_dir.mkdir(mode=0o755)
                (bin_dir / "genv").write_text(
                    f"#!/bin/sh\nPYTHONPATH={site}; export PYTHONPATH\n"
                    f'exec {python} -m genv "$@"\n'
                )
                (bin_dir / "genv").chmod(0o755)
                yield UserRuntime(python, site)
                return
            reasons.append(f"{python}: {result.stderr.strip().splitlines()[-1:]}")
        pytest.skip("no Python that test users can run genv with: " + "; ".join(reasons))
    finally:
        shutil.rmtree(site, ignore_errors=True)


def _genv_environment(overrides: Mapping[str, str | None]) -> dict[str, str]:
    """The GENV_* variables of this test (set by fixtures through monkeypatch) plus overrides."""
    values = {name: os.environ[name] for name in GENV_VARIABLES if name in os.environ}
    for name, value in overrides.items():
        if value is None:
            values.pop(name, None)
        else:
            values[name] = value
    return values


def _user_environment(site: Path, overrides: Mapping[str, str | None]) -> dict[str, str]:
    environment = {
        "PATH": f"{site / 'bin'}:{USER_PATH}",
        "LANG": "C.UTF-8",
        "HOME": "/",
        "PYTHONPATH": str(site),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    environment.update(_genv_environment(overrides))
    return {name: value for name, value in environment.items() if value is not None}


def _root_environment(overrides: Mapping[str, str | None]) -> dict[str, str]:
    environment = {
        name: value for name, value in os.environ.items() if name not in GENV_VARIABLES
    }
    environment.update(_genv_environment(overrides))
    return environment


@pytest.fixture
def genv_popen(request: pytest.FixtureRequest) -> Callable[..., subprocess.Popen[str]]:
    """Start ``genv ARGS...`` (as ``user`` when given) and return the Popen, pipes open.

    ``env`` adds or (with None) removes variables; ``umask`` is set in the child.
    """

    def start(
        *args: str,
        user: LinuxUser | None = None,
        env: Mapping[str, str | None] | None = None,
        umask: int | None = None,
    ) -> subprocess.Popen[str]:
        argv = [str(arg) for arg in args]
        if user is None:
            command = [sys.executable, "-m", "genv", *argv]
            environment = _root_environment(env or {})

            def preexec() -> None:
                if umask is not None:
                    os.umask(umask)
        else:
            runtime: UserRuntime = request.getfixturevalue("user_runtime")
            command = [runtime.python, "-m", "genv", *argv]
            environment = _user_environment(runtime.site, env or {})
            preexec = user.become(umask)
        return subprocess.Popen(
            command, env=environment, cwd="/", preexec_fn=preexec, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )

    return start


@pytest.fixture
def run_genv(genv_popen: Callable[..., subprocess.Popen[str]]) -> Callable[..., GenvResult]:
    """Run ``genv ARGS...`` to the end; returns ``GenvResult(rc, out, err)``.

    Keyword arguments: ``user`` (a LinuxUser; root when None), ``env``, ``umask``, ``timeout``.
    """

    def run(*args: str, timeout: float = COMMAND_TIMEOUT, **options: Any) -> GenvResult:
        process = genv_popen(*args, **options)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            raise AssertionError(f"genv {' '.join(args)} did not end: {out}{err}") from None
        return GenvResult(process.returncode, out, err)

    return run


@pytest.fixture
def run_as(linux_users: LinuxUsers) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run any command as ``user`` (cwd /, a plain PATH); returns the CompletedProcess."""

    def run(user: LinuxUser, argv: Sequence[str], check: bool = True,
            **options: Any) -> subprocess.CompletedProcess[str]:
        options.setdefault("env", {"PATH": USER_PATH, "LANG": "C.UTF-8", "HOME": "/"})
        return subprocess.run(
            [str(arg) for arg in argv], preexec_fn=user.become(), cwd="/", text=True,
            capture_output=True, timeout=COMMAND_TIMEOUT, check=check, **options,
        )

    return run


# -- folders and the simulated machine -------------------------------------------------


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A fresh folder under /tmp, mode 1777 (every user may create files), removed after."""
    path = Path(tempfile.mkdtemp(prefix="genvtest-", dir="/tmp"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class FakeMachine:
    """The machine file of the fake backend, and the state folder used with it."""

    root: Path
    devices: list[dict[str, Any]] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.root / "machine.json"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def state_file(self, uid: int) -> Path:
        return self.state_dir / f"state-{uid}.json"

    def read_state(self, uid: int) -> dict[str, Any]:
        return json.loads(self.state_file(uid).read_bytes())

    def set_devices(self, count_or_memories: int | Sequence[str], memory: str = "80gi") -> None:
        """``4`` gives four devices of ``memory``; ``["80gi", "16gi"]`` gives one per entry."""
        if isinstance(count_or_memories, int):
            memories: Sequence[str] = [memory] * count_or_memories
        else:
            memories = count_or_memories
        self.devices = [{"total_memory": total} for total in memories]
        self.write()

    def add_process(self, pid: int, device: int, used_memory: str | None = "1gi") -> None:
        self.processes.append({"pid": pid, "device": device, "used_memory": used_memory})
        self.write()

    def remove_process(self, pid: int) -> None:
        self.processes = [entry for entry in self.processes if entry["pid"] != pid]
        self.write()

    def write(self) -> None:
        """Replace the file through genv's one writer (atomic, newer mtime, starts recorded)."""
        write_machine(self.path, self.devices, self.processes)


@pytest.fixture
def fake_machine(shared_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> FakeMachine:
    """A simulated machine of 4 devices (80gi each) and an empty state folder, in the env."""
    machine = FakeMachine(shared_tmp)
    machine.set_devices(4)
    for name in GENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GENV_GPU_BACKEND", "fake")
    monkeypatch.setenv("GENV_FAKE_MACHINE", str(machine.path))
    monkeypatch.setenv("GENV_TMPDIR", str(machine.state_dir))
    install_state_dir(machine.state_dir)
    return machine


def install_state_dir(path: Path) -> Path:
    """The admin's install step: the shared state folder, root's, mode 1777 (users never
    create it in a shared place themselves, see docs/security.md)."""
    path.mkdir(mode=0o1777, exist_ok=True)
    path.chmod(0o1777)
    return path


# -- processes -------------------------------------------------------------------------


@pytest.fixture
def sleeper() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``sleep`` (or ``argv``) as root or as ``user``, with ``env`` added; killed after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(
        user: LinuxUser | None = None,
        env: Mapping[str, str] | None = None,
        seconds: int = 3600,
        argv: Sequence[str] | None = None,
        executable: str | None = None,
    ) -> subprocess.Popen[bytes]:
        environment = {"PATH": USER_PATH, "LANG": "C.UTF-8"}
        environment.update(env or {})
        process = subprocess.Popen(
            list(argv) if argv is not None else ["sleep", str(seconds)],
            executable=executable, env=environment, cwd="/", start_new_session=True,
            preexec_fn=None if user is None else user.become(),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


@pytest.fixture
def new_env(
    run_genv: Callable[..., GenvResult],
    sleeper: Callable[..., subprocess.Popen[bytes]],
) -> Callable[..., subprocess.Popen[bytes]]:
    """Create environment ``eid`` for ``user`` (root when None), alive while its sleeper runs.

    ``name``, ``gpus`` and ``gpu_memory`` configure it; returns the sleeper (kill it to end
    the environment).
    """

    def create(
        eid: str,
        user: LinuxUser | None = None,
        name: str | None = None,
        gpus: int | None = None,
        gpu_memory: str | None = None,
    ) -> subprocess.Popen[bytes]:
        process = sleeper(user=user, env={"GENV_ENVIRONMENT_ID": eid})
        uid = 0 if user is None else user.uid
        name_of_user = "root" if user is None else user.name
        steps: list[list[str]] = [
            ["envs", "activate", "--eid", eid, "--uid", str(uid), "--username", name_of_user,
             "--pid", str(process.pid)]
        ]
        if name is not None:
            steps.append(["envs", "config", "--eid", eid, "name", "--name", name])
        if gpus is not None:
            steps.append(["envs", "config", "--eid", eid, "gpus", "--count", str(gpus)])
        if gpu_memory is not None:
            steps.append(["envs", "config", "--eid", eid, "gpu-memory",
                          "--gpu-memory", gpu_memory])
        for step in steps:
            result = run_genv(*step, user=user)
            assert result.rc == 0, (step, result)
        return process

    return create

