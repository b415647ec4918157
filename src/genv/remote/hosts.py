"""The hosts of a ``genv remote`` command: ``-H a,b,c`` or ``--hostfile FILE``.

A host is whatever ``ssh`` accepts as a destination: a name from the user's OpenSSH
configuration (an alias), a host name or an address, optionally ``user@`` in front. Names are
passed to ``ssh`` as they are, so its configuration decides the rest (HostName, User, Port,
IdentityFile, ProxyJump); they are checked only so that none can be taken for an option or
break a line of output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from genv.errors import UsageError

# Letters, digits and what host names, aliases, IPv6 addresses and ``user@`` use.
_NAME = re.compile(r"[A-Za-z0-9_.%:\[\]-]+")
_LOGIN = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?")
MAX_HOSTS = 10000
MAX_HOSTFILE_BYTES = 1 << 20


@dataclass(frozen=True)
class Host:
    """One host: ``name`` as the user wrote it (and as output shows it), ``login`` the SSH
    login name (``user@`` or ``-l``; None leaves it to the OpenSSH configuration)."""

    name: str
    login: str | None = None

    @property
    def destination(self) -> str:
        return f"{self.login}@{self.name}" if self.login else self.name


def parse_host(text: str, login: str | None = None) -> Host:
    text = text.strip()
    user, at, name = text.rpartition("@")
    if not at:
        user, name = "", text
    if not name or not _NAME.fullmatch(name) or name.startswith("-"):
        raise UsageError(
            f"invalid host {text!r}: use a host name, an address or an alias from your SSH "
            "configuration (letters, digits and . _ - : %)"
        )
    chosen = user or login
    if chosen is not None and not _LOGIN.fullmatch(chosen):
        raise UsageError(f"invalid login name {chosen!r} for host {name}")
    return Host(name, chosen or None)


def parse_hosts(hosts: str | None, hostfile: str | None, login: str | None) -> list[Host]:
    """The hosts named by ``-H`` (comma-separated) or in ``--hostfile`` (one per line, ``#``
    comments), each once, in the order given."""
    if hostfile is not None:
        try:
            with open(Path(hostfile), "rb") as file:
                data = file.read(MAX_HOSTFILE_BYTES + 1)
        except OSError as error:
            raise UsageError(f"cannot read the host file {hostfile}: {error.strerror}") from None
        if len(data) > MAX_HOSTFILE_BYTES:
            raise UsageError(f"the host file {hostfile} is larger than 1 MiB")
        lines = data.decode("utf-8", "replace").splitlines()
        items = [line.split("#", 1)[0].strip() for line in lines]
    else:
        items = (hosts or "").split(",")
    found: list[Host] = []
    seen: set[str] = set()
    for item in items:
        if not item.strip():
            continue
        host = parse_host(item, login)
        if host.name in seen:
            continue
        seen.add(host.name)
        found.append(host)
    if not found:
        raise UsageError("no hosts given: name them with -H a,b,c or --hostfile FILE")
    if len(found) > MAX_HOSTS:
        raise UsageError(f"too many hosts ({len(found)}; at most {MAX_HOSTS})")
    return found
