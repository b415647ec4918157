"""How ``genv remote`` runs OpenSSH's ``ssh``, and what its failures mean in one line.

The system ``ssh`` is used, not a library: it reads the user's configuration exactly as their
own ``ssh`` does (aliases, ``Match``, ``Include``, User, Port, IdentityFile, ProxyJump,
certificates, the agent, hardware keys), and it is the program admins already trust.
Every connection is made with:

- ``BatchMode=yes``: nothing ever waits on a password or passphrase prompt;
- ``StrictHostKeyChecking=yes``: a host key must already be in known_hosts and match; an
  unknown or changed key is refused, never accepted (whatever the configuration says);
- ``ConnectTimeout`` from ``-t``; the command itself is bounded by the caller;
- no agent, X11 or port forwarding: root on a host must not reach the admin's agent.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path

from genv.errors import GenvError
from genv.remote.hosts import Host

DEFAULT_TIMEOUT = 10.0
_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9]*(=| ).+")


class HostError(GenvError):
    """A host could not be used: ``str()`` is one line that names the host and what to do."""

    def __init__(self, host: Host, line: str, kind: str = "error") -> None:
        super().__init__(f"{host.name}: {line}")
        self.host = host
        self.kind = kind


@dataclass(frozen=True)
class SshOptions:
    """What the command line says about SSH: ``-l``, ``-t``, ``-F`` and ``-o`` options."""

    timeout: float = DEFAULT_TIMEOUT
    config_file: str | None = None
    options: tuple[str, ...] = ()
    control_dir: str | None = None  # connection sharing for one-shot commands; None: off

    def base(self, host: Host, share: bool) -> list[str]:
        """``ssh`` and its options for ``host`` (before the command)."""
        argv = ["ssh"]
        if self.config_file:
            argv += ["-F", self.config_file]
        # ssh keeps the first value it is given: these come before the user's own.
        argv += [
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"ConnectTimeout={max(1, round(self.timeout))}",
            "-o",
            "ClearAllForwardings=yes",
            "-a",
            "-x",
        ]
        if share and self.control_dir:
            argv += [
                "-o",
                "ControlMaster=auto",
                "-o",
                f"ControlPath={self.control_dir}/%C",
                "-o",
                "ControlPersist=60",
            ]
        else:
            argv += ["-o", "ControlPath=none"]
        for option in self.options:
            argv += ["-o", option]
        if host.login:
            argv += ["-l", host.login]
        return argv

    def command(
        self, host: Host, remote: list[str], share: bool = True, tty: bool = False
    ) -> list[str]:
        """The full ``ssh`` command line running ``remote`` (words, quoted here) on ``host``."""
        return [
            *self.base(host, share),
            "-t" if tty else "-T",
            "--",
            host.name,
            " ".join(shlex.quote(word) for word in remote),
        ]


def check_option(text: str) -> str:
    """An ``-o`` option for ssh: ``Name=value`` (what ``ssh -o`` takes)."""
    if not _OPTION.fullmatch(text) or "\n" in text:
        raise ValueError(f"{text!r} is not an SSH option of the form Name=value")
    return text


def control_dir() -> str | None:
    """A private folder for shared connections (``ControlPath``), or None when there is no
    safe one: a socket in it gives a shell on every host, so nobody else may reach it."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    home = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    folder = home / "genv-ssh"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    # A socket path is at most 107 bytes: the folder, %C (40 hex digits) and the 17
    # characters ssh adds while it creates the socket.
    return str(folder) if len(str(folder)) <= 48 else None


# -- what a failure means ------------------------------------------------------------------

_CHANGED = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "Host key for ", "POSSIBLE DNS SPOOFING")


def explain(host: Host, status: int | None, stderr: str, timeout: float) -> HostError:
    """One line for a failed ``ssh`` run: what happened on ``host`` and what to do."""
    text = stderr.strip()
    last = _last_line(text)
    if status is None or (status == 255 and "timed out" in last):
        return HostError(host, f"did not answer within {timeout:g} s (-t); left alone", "timeout")
    if any(marker in text for marker in _CHANGED) and "verification failed" in text.lower():
        return HostError(
            host,
            "its host key has CHANGED since it was recorded in known_hosts (the host was "
            "reinstalled, or someone is in between): check the new key with the host's admin, "
            f"then replace the old one (ssh-keygen -R {host.name}); nothing was done there",
            "host-key",
        )
    if (
        "Host key verification failed" in text
        or "No ED25519 host key is known" in text
        or ("host key is known" in text)
    ):
        return HostError(
            host,
            "its host key is not in known_hosts, and unknown keys are never accepted: check it "
            f"and record it (connect once with: ssh {host.destination})",
            "host-key",
        )
    if (
        "a password is required" in text
        or "a terminal is required" in text
        or ("no askpass program" in text)
    ):
        return HostError(
            host,
            "sudo asks for a password there; allow the login user to run genv usage as root "
            "without one (a NOPASSWD rule in sudoers)",
            "sudo",
        )
    if "is not allowed to execute" in text or "not in the sudoers file" in text:
        return HostError(
            host, "sudo refuses genv usage there for the login user: add a sudoers rule", "sudo"
        )
    if "sudo: command not found" in text or "sudo: not found" in text:
        return HostError(
            host,
            "sudo is not installed there; install it (genv usage runs as root through sudo -n)",
            "sudo",
        )
    if status == 127 or "genv: command not found" in text or "genv: not found" in text:
        return HostError(
            host,
            "genv is not installed there (not on the PATH of the login shell, nor of sudo): "
            "install this genv on it",
            "no-genv",
        )
    if "invalid choice" in text or "unrecognized arguments" in text:
        return HostError(
            host,
            "the genv there is too old for genv remote (it has no genv usage serve/--format "
            "json of this version): install this genv on it",
            "old-genv",
        )
    if "Permission denied" in text:
        return HostError(
            host,
            f"SSH login refused ({last}); check the key or agent for "
            f"{host.login or 'the login user'} (no password is ever asked)",
            "auth",
        )
    if status == 255:
        return HostError(host, f"cannot connect: {last or 'ssh failed'}", "connect")
    return HostError(host, f"failed (exit status {status}): {last or 'no message'}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    line = "".join(c if c.isprintable() else "?" for c in line)
    return line[:300]
