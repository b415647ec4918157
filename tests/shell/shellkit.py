"""Helpers of the shell tests: an interactive shell in a terminal, the plain genv command."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect

PROMPT = "genv-test> "
PROMPT_RE = r"(\(genv\) )?genv-test> "
TIMEOUT = 30
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r")
# The genv under test: the one installed beside this Python (a venv's bin/), never whatever
# PATH happens to hold, so that the tests pass without the venv activated.
GENV_BIN = os.path.dirname(os.path.abspath(sys.executable))


def with_genv_path(path: str | None) -> str:
    """``path`` with the folder of the genv under test first."""
    return f"{GENV_BIN}:{path}" if path else GENV_BIN


def clean(text: str) -> str:
    """Terminal output without escape sequences and carriage returns."""
    return _ESCAPES.sub("", text)


class Shell:
    """One interactive shell in a pseudo-terminal."""

    def __init__(self, kind: str, env: dict[str, str], cwd: Path) -> None:
        self.kind = kind
        argv = (["bash", "--norc", "--noprofile", "-i"] if kind == "bash"
                else ["zsh", "-f", "-i"])
        self.child = pexpect.spawn(argv[0], argv[1:], env=env, cwd=str(cwd),
                                   encoding="utf-8", timeout=TIMEOUT, dimensions=(40, 1000))
        self.child.delaybeforesend = None
        if kind == "zsh":  # zsh -f ignores an inherited prompt; keep its line editor quiet
            self.child.sendline(f"PS1='{PROMPT}'; unsetopt prompt_sp; PROMPT_EOL_MARK=''")
        else:
            self.child.sendline("bind 'set enable-bracketed-paste off' 2>/dev/null")
        self.child.sendline("echo __READY__")
        self.child.expect("\n__READY__")
        self.child.expect(PROMPT_RE)
        self.prompt = self.child.after

    @property
    def pid(self) -> int:
        return self.child.pid

    def run(self, command: str) -> tuple[str, int]:
        """Type ``command``; its output (stdout and stderr, escapes removed) and exit status."""
        self.child.sendline(f"{command}; echo __RC$?__")
        self.child.expect(r"__RC(\d+)__")
        rc = int(self.child.match.group(1))
        text = clean(self.child.before)
        output = text.split("\n", 1)[1] if "\n" in text else ""  # drop the echoed line
        self.child.expect(PROMPT_RE)
        self.prompt = clean(self.child.after)
        return output.strip("\n"), rc

    def ok(self, command: str) -> str:
        output, rc = self.run(command)
        assert rc == 0, f"{command!r} exited with {rc}: {output}"
        return output

    def value(self, name: str) -> str:
        """The value of a variable, ``<unset>`` when unset."""
        return self.ok(f'printf "%s" "${{{name}-<unset>}}"')

    def close(self) -> None:
        if self.child.isalive():
            self.child.sendline("exit")
            with contextlib.suppress(pexpect.EOF, pexpect.TIMEOUT):
                self.child.expect(pexpect.EOF, timeout=5)
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close()


def genv(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The plain genv command (no shell function), as a script would run it."""
    return subprocess.run([sys.executable, "-m", "genv", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)


def attached(env: dict[str, str]) -> dict[int, list[str]]:
    """Device index -> the ids of the environments attached to it, from `genv devices`."""
    result = genv("devices", "ps", "--format", "csv", "--no-header", env=env)
    assert result.returncode == 0, result.stderr
    devices: dict[int, list[str]] = {}
    for line in result.stdout.splitlines():
        index, _, rest = line.partition(",")
        eid = rest.split(",")[0]
        devices.setdefault(int(index), [])
        if eid:
            devices[int(index)].append(eid)
    return devices
