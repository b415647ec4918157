"""Simulated hosts for ``genv remote``, each a real OpenSSH server on this machine.

- ``ssh_site`` (session): a client key, the folder of authorized keys (one file per login
  name), home folders for the test users (with genv's shell integration in ``~/.profile``),
  and the sudo rules of the tests, installed for the session and removed after it: alice
  may run ``genv usage`` as root without a password, bob only with one (which ``sudo -n``
  never asks for).
- ``cluster``: a factory of clusters of N hosts. Each host is its own ``sshd`` (its own host
  key, 127.0.0.x address and port, state folder and simulated machine, given to sessions
  through ``SetEnv``), reached through an SSH configuration file with one alias per host
  (``h1``, ``h2``...: HostName, Port, IdentityFile, User, known_hosts; optionally ProxyJump).
  A host can be killed (its sshd and every process under it), paused (SIGSTOP: it accepts
  connections and never answers), restarted, or given a new host key.

Skipped where sshd, ssh or sudo are not installed (``.ci/run`` installs them) or not root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from genv.backends.machine_file import write_machine

from helpers_remote import Result
from promkit import prometheus  # noqa: F401 - the fixture (genv remote monitor's tests)
from tmuxkit import terminal  # noqa: F401 - the fixture (genv remote top's tests)

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SUDOERS = Path("/etc/sudoers.d")
START_TIMEOUT = 10.0


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "simulated SSH hosts need root"
    for program in ("ssh", "ssh-keygen", "sudo", "visudo"):
        if shutil.which(program) is None:
            return f"{program} is not installed (.ci/run installs openssh and sudo)"
    if not os.access(SSHD, os.X_OK):
        return "sshd is not installed (.ci/run installs openssh-server)"
    if not SUDOERS.is_dir():
        return "/etc/sudoers.d does not exist"
    return None


def keygen(path: Path) -> str:
    """A new ed25519 key pair at ``path``; its public line."""
    for old in (path, path.with_suffix(".pub")):
        old.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "genvtest",
                    "-f", str(path)], check=True, capture_output=True)
    return path.with_suffix(".pub").read_text().strip()


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (sshd's children call setsid, so no group covers them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(data[data.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass(frozen=True)
class SshSite:
    folder: Path
    client_key: Path
    keys_dir: Path
    runtime: Any
    users: Any

    @property
    def admin(self) -> Any:  # may sudo genv usage without a password
        return self.users.alice

    @property
    def user(self) -> Any:  # may not (sudo would ask for a password)
        return self.users.bob


def _sudoers(site: Path, runtime: Any, users: Any) -> str:
    genv = runtime.bin_dir / "genv"
    keep = 'env_keep += "GENV_TMPDIR GENV_FAKE_MACHINE GENV_GPU_BACKEND"'
    path = f'secure_path="{runtime.bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"'
    lines = []
    for user in users:
        lines.append(f"Defaults:{user.name} {keep}, {path}")
    lines.append(f"{users.alice.name} ALL=(root) NOPASSWD: {genv} usage *")
    lines.append(f"{users.bob.name} ALL=(root) {genv} usage *")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def ssh_site(linux_users: Any, user_runtime: Any) -> Iterator[SshSite]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation
    folder = Path(tempfile.mkdtemp(prefix="genvtest-ssh-", dir="/tmp"))
    folder.chmod(0o755)
    keys = folder / "authorized"
    keys.mkdir(mode=0o755)
    private = folder / "client"
    private.mkdir(mode=0o700)
    client_key = private / "id_ed25519"
    public = keygen(client_key)
    homes = []
    for user in linux_users:
        (keys / user.name).write_text(public + "\n")
        (keys / user.name).chmod(0o644)
        # A key login needs an account that is not locked ("!" in shadow): "*" is no
        # password at all, and no way in but the key.
        subprocess.run(["usermod", "-p", "*", user.name], check=True, capture_output=True)
        home = Path(f"/home/{user.name}")
        if not home.exists():
            home.mkdir(mode=0o755, parents=True)
            homes.append(home)
            (home / ".profile").write_text(  # genv installed, and its shell integration
                f'PATH="{user_runtime.bin_dir}:$PATH"\nPS1="genvtest$ "\n'
                'eval "$(genv shell --init)"\n'
            )
            os.chown(home, user.uid, user.gid)
            os.chown(home / ".profile", user.uid, user.gid)
    rules = SUDOERS / f"genvtest-remote-{os.getpid()}"
    text = _sudoers(folder, user_runtime, linux_users)
    candidate = folder / "sudoers"
    candidate.write_text(text)
    subprocess.run(["visudo", "-cqf", str(candidate)], check=True, capture_output=True)
    shutil.copy(candidate, rules)
    rules.chmod(0o440)
    try:
        yield SshSite(folder, client_key, keys, user_runtime, linux_users)
    finally:
        rules.unlink(missing_ok=True)
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


def _free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


@dataclass
class SimHost:
    """One simulated host: an sshd with its own key, address, state and machine."""

    name: str
    address: str
    folder: Path
    site: SshSite
    genv_on_path: bool = True
    other_genv: str | None = None  # a folder with another genv to find first (e.g. 1.4.3)
    port: int = 0
    devices: list[dict[str, Any]] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)
    server: subprocess.Popen[bytes] | None = None
    public_key: str = ""

    def __post_init__(self) -> None:
        self.folder.mkdir(mode=0o755)
        self.state_dir.mkdir(mode=0o1777)
        self.state_dir.chmod(0o1777)  # as the admin installs it
        self.port = _free_port(self.address)
        self.public_key = keygen(self.host_key)
        self.set_devices(4)

    @property
    def host_key(self) -> Path:
        return self.folder / "host_key"

    @property
    def machine(self) -> Path:
        return self.folder / "machine.json"

    @property
    def state_dir(self) -> Path:
        return self.folder / "state"

    def env(self) -> dict[str, str]:
        """This host's view for genv run here directly (the variables its sshd sets)."""
        return {"GENV_TMPDIR": str(self.state_dir), "GENV_FAKE_MACHINE": str(self.machine),
                "GENV_GPU_BACKEND": "fake"}

    def known_hosts_line(self) -> str:
        return f"[{self.address}]:{self.port} {' '.join(self.public_key.split()[:2])}"

    # -- the simulated machine ---------------------------------------------------------

    def set_devices(self, count: int, memory: str = "80gi") -> None:
        self.devices = [{"total_memory": memory} for _ in range(count)]
        self.write()

    def add_process(self, pid: int, device: int, used_memory: str = "1gi") -> None:
        self.processes.append({"pid": pid, "device": device, "used_memory": used_memory})
        self.write()

    def write(self) -> None:
        write_machine(self.machine, self.devices, self.processes)
        for path in (self.machine, Path(f"{self.machine}.flat")):
            if path.exists():
                path.chmod(0o644)

    # -- the server --------------------------------------------------------------------

    def config(self) -> str:
        path = f"{self.site.runtime.bin_dir}:" if self.genv_on_path else ""
        if self.other_genv:
            path = f"{self.other_genv}:{path}"
        variables = " ".join(f"{k}={v}" for k, v in self.env().items())
        return "\n".join([
            f"ListenAddress {self.address}:{self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.folder / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.site.keys_dir}/%u",
            "AuthenticationMethods publickey",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin no",
            "UsePAM no",
            "StrictModes no",
            "MaxStartups 200",
            "LogLevel ERROR",
            f"SetEnv PATH={path}/usr/bin:/bin {variables}",
            "",
        ])

    def start(self) -> None:
        (self.folder / "sshd_config").write_text(self.config())
        self.server = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.folder / "sshd_config")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "sshd.log", "ab"),  # noqa: SIM115 - the child keeps it
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise AssertionError(f"sshd of {self.name} exited: "
                                     f"{(self.folder / 'sshd.log').read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(
                (self.address, self.port), timeout=1
            ) as probe:
                probe.settimeout(2)
                if probe.recv(64).startswith(b"SSH-"):
                    return
            time.sleep(0.01)
        raise AssertionError(f"sshd of {self.name} did not start")

    def _signal_tree(self, signum: int) -> None:
        if self.server is None:
            return
        for pid in [self.server.pid, *descendants(self.server.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def kill(self) -> None:
        """The host is gone: its sshd and every session and command under it."""
        if self.server is None:
            return
        self._signal_tree(signal.SIGCONT)
        self._signal_tree(signal.SIGKILL)
        self.server.wait(timeout=10)
        self.server = None

    def pause(self) -> None:
        """The host hangs: connections are accepted by the kernel and never answered."""
        self._signal_tree(signal.SIGSTOP)

    def new_host_key(self) -> None:
        """The host was reinstalled (or someone is in between): a new key, same address."""
        self.kill()
        self.public_key = keygen(self.host_key)
        self.start()


class SimCluster:
    """The hosts, the client's SSH configuration, and ``genv remote`` run against them."""

    def __init__(self, site: SshSite, folder: Path, hosts: list[SimHost],
                 jump: dict[str, str]) -> None:
        self.site = site
        self.folder = folder
        self.hosts = hosts
        self.jump = jump
        self.known_hosts = folder / "known_hosts"
        self.ssh_config = folder / "ssh_config"
        folder.mkdir(mode=0o755, exist_ok=True)
        self.runtime = Path(tempfile.mkdtemp(prefix="gr-", dir="/tmp"))  # short: socket paths
        self.write_client_files()

    def __getitem__(self, name: str) -> SimHost:
        return next(host for host in self.hosts if host.name == name)

    @property
    def names(self) -> str:
        return ",".join(host.name for host in self.hosts)

    def write_client_files(self) -> None:
        """known_hosts as the admin recorded it; one alias per host in the configuration."""
        self.known_hosts.write_text("".join(h.known_hosts_line() + "\n" for h in self.hosts))
        lines = []
        for host in self.hosts:
            lines += [f"Host {host.name}", f"  HostName {host.address}", f"  Port {host.port}"]
            if host.name in self.jump:
                lines.append(f"  ProxyJump {self.jump[host.name]}")
        lines += [
            "Host *",
            f"  User {self.site.admin.name}",
            f"  IdentityFile {self.site.client_key}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {self.known_hosts}",
            "  GlobalKnownHostsFile /dev/null",
            "",
        ]
        self.ssh_config.write_text("\n".join(lines))

    def argv(self, *args: str, hosts: str | None = None) -> list[str]:
        return [sys.executable, "-m", "genv", "remote", "-F", str(self.ssh_config),
                "-H", hosts or self.names, *args]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GENV_")}
        env["XDG_RUNTIME_DIR"] = str(self.runtime)  # where shared connections live
        return env

    def popen(self, *args: str, hosts: str | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args, hosts=hosts), env=self.environment(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def run(self, *args: str, hosts: str | None = None, timeout: float = 60) -> Result:
        process = self.popen(*args, hosts=hosts)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            raise AssertionError(f"genv remote {' '.join(args)} did not end: {out}{err}") from None
        return Result(process.returncode, out, err)

    def stop_control_masters(self) -> None:
        """Shared connections (ControlPersist) of the commands run: ended with the test."""
        runtime = self.runtime / "genv-ssh"
        if runtime.is_dir():
            for socket_path in runtime.iterdir():
                subprocess.run(["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "x"],
                               capture_output=True, check=False, timeout=10)
        shutil.rmtree(self.runtime, ignore_errors=True)


@pytest.fixture
def cluster(ssh_site: SshSite) -> Iterator[Callable[..., SimCluster]]:
    """``cluster(3)``: three hosts h1..h3 started; ``jump={"h3": "h1"}`` reaches h3 through
    h1; ``no_genv={"h2"}`` leaves genv off h2's PATH."""
    made: list[SimCluster] = []
    folder = Path(tempfile.mkdtemp(prefix="genvtest-cluster-", dir="/tmp"))
    folder.chmod(0o755)

    def make(count: int, jump: dict[str, str] | None = None, no_genv: Sequence[str] = (),
             other_genv: dict[str, str] | None = None) -> SimCluster:
        base = 10 + 10 * len(made)
        hosts = [
            SimHost(f"h{i}", f"127.0.0.{base + i}", folder / f"c{len(made)}h{i}", ssh_site,
                    genv_on_path=f"h{i}" not in no_genv,
                    other_genv=(other_genv or {}).get(f"h{i}"))
            for i in range(1, count + 1)
        ]
        for host in hosts:
            host.start()
        made.append(SimCluster(ssh_site, folder / f"c{len(made)}", hosts, jump or {}))
        return made[-1]

    try:
        yield make
    finally:
        for sim in made:
            with contextlib.suppress(Exception):
                sim.stop_control_masters()
            for host in sim.hosts:
                host.kill()
        shutil.rmtree(folder, ignore_errors=True)
