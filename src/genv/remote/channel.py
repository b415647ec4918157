"""Talking to hosts over ``ssh``: one-shot commands and the long-lived agent channel.

Everything is bounded: connecting and each answer by ``-t``, what a host may send by
wire.MAX_LINE, and how many connections are being set up at once by ``--parallel`` (an SSH
handshake is the costly part, for this machine and for a shared jump host alike).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from genv.remote import wire
from genv.remote.hosts import Host
from genv.remote.ssh import HostError, SshOptions, explain

T = TypeVar("T")
R = TypeVar("R")
STDERR_KEPT = 8192


async def bounded(
    items: Sequence[T], work: Callable[[T], Awaitable[R]], limit: int
) -> list[R | BaseException]:
    """``work`` on every item, at most ``limit`` at a time; results (or errors) in order."""
    gate = asyncio.Semaphore(max(1, limit))

    async def one(item: T) -> R:
        async with gate:
            return await work(item)

    return list(await asyncio.gather(*(one(item) for item in items), return_exceptions=True))


async def _spawn(argv: list[str], stdin: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=wire.MAX_LINE + 1,
        start_new_session=True,  # a ^C to genv does not reach ssh half-way through
    )


def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


async def run_command(
    host: Host, ssh: SshOptions, remote: list[str], stdin: bytes | None = None
) -> bytes:
    """Run ``remote`` on ``host`` and return its output; HostError when it fails or does
    not end within ``-t`` seconds."""
    argv = ssh.command(host, remote)
    try:
        process = await _spawn(
            argv, asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL
        )
    except OSError as error:
        raise HostError(host, f"cannot run ssh: {error.strerror}", "no-ssh") from None
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), ssh.timeout)
    except asyncio.TimeoutError:
        _kill(process)
        await process.wait()
        raise explain(host, None, "", ssh.timeout) from None
    if process.returncode != 0:
        raise explain(host, process.returncode, err.decode(errors="replace"), ssh.timeout)
    return out


class AgentChannel:
    """One host's ``genv usage serve``, on an SSH session that stays open across cycles."""

    def __init__(self, host: Host, ssh: SshOptions, remote: list[str]) -> None:
        self.host = host
        self.ssh = ssh
        self.remote = remote
        self.process: asyncio.subprocess.Process | None = None
        self.hello: dict[str, Any] = {}
        self._stderr = bytearray()
        self._drain: asyncio.Task[None] | None = None
        self._ids = 0

    @property
    def open(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def connect(self) -> dict[str, Any]:
        """Start the agent and wait for its greeting (within ``-t``)."""
        argv = self.ssh.command(self.host, self.remote, share=False)
        try:
            self.process = await _spawn(argv, asyncio.subprocess.PIPE)
        except OSError as error:
            raise HostError(self.host, f"cannot run ssh: {error.strerror}", "no-ssh") from None
        assert self.process.stderr is not None
        self._drain = asyncio.ensure_future(self._keep_stderr(self.process.stderr))
        hello = await self._answer()
        if hello.get("op") != "hello":
            await self.close()
            raise HostError(
                self.host,
                "the genv there did not greet as genv usage serve does "
                "(too old?): install this genv on it",
                "old-genv",
            )
        self.hello = hello
        return hello

    async def _keep_stderr(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(4096):
            self._stderr += chunk
            del self._stderr[:-STDERR_KEPT]

    async def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """Send one request and wait (within ``-t``) for its answer."""
        if not self.open:
            raise HostError(self.host, "the connection is closed", "connect")
        assert self.process is not None and self.process.stdin is not None
        self._ids += 1
        body = {**body, "id": self._ids}
        try:
            self.process.stdin.write(wire.dumps(body))
            await self.process.stdin.drain()
        except (ConnectionError, RuntimeError):
            raise await self._failure() from None
        answer = await self._answer()
        if answer.get("id") != self._ids:
            await self.close()
            raise HostError(self.host, "answered out of turn; connection closed", "protocol")
        return answer

    async def _answer(self) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), self.ssh.timeout)
        except asyncio.TimeoutError:
            await self.close()
            raise explain(self.host, None, "", self.ssh.timeout) from None
        except (ValueError, asyncio.LimitOverrunError):
            await self.close()
            raise HostError(self.host, "sent a line longer than any snapshot", "protocol") from None
        if not line.endswith(b"\n"):
            raise await self._failure()
        try:
            return wire.loads(line)
        except wire.WireError as error:
            await self.close()
            raise HostError(
                self.host, f"sent what is not genv's protocol: {error}", "protocol"
            ) from None

    async def _failure(self) -> HostError:
        """Why the session ended: ssh's exit status and the last words on its stderr."""
        assert self.process is not None
        try:
            status: int | None = await asyncio.wait_for(self.process.wait(), self.ssh.timeout)
        except asyncio.TimeoutError:
            status = None
        await self.close()
        return explain(
            self.host,
            status if status is not None else 255,
            self._stderr.decode(errors="replace") or "the connection was closed",
            self.ssh.timeout,
        )

    async def close(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(Exception):
                process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 1.0)
        except asyncio.TimeoutError:
            _kill(process)
            await process.wait()
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain, 1.0)
