"""The usage of many hosts, one sample each: the source of ``genv remote monitor`` and
``genv remote top``.

Each host runs ``genv usage serve --usage`` (genv.metrics.host_agent; through ``sudo -n``
unless told otherwise) on an SSH session that stays open, the channel the enforcement daemon
uses (genv.remote.channel.AgentChannel), and builds its usage view there with ``genv
monitor``'s own code; a quiet host answers ``same``. Every host is followed by a task of its
own, asked every ``interval`` seconds, in an event loop on a thread of its own: a host that is
slow, hangs (``-t`` bounds each answer) or is gone holds up nobody, and ``collect`` hands
back at once what each host said last, so an exporter's page or a ``top`` frame never waits
for a host. A host that does not answer is a sample without usage (``genv_host_up 0``),
reported once when it goes and once when it is back, and connected again after 1 s, then 2,
4, ... up to a minute while it keeps failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from genv.metrics.host_agent import USAGE
from genv.metrics.source import HostSample
from genv.metrics.usage import HostUsage
from genv.metrics.usage_wire import decode_usage
from genv.remote import wire
from genv.remote.channel import AgentChannel
from genv.remote.hosts import Host
from genv.remote.ssh import HostError, SshOptions
from genv.system import logs

log = logs.logger("genv.metrics")
MAX_BACKOFF = 60.0
CONNECTING = "connecting"


@dataclass
class _Host:
    channel: AgentChannel
    sample: HostSample
    usage: HostUsage | None = None  # what it said last, for ``same`` answers
    failures: int = 0
    down: str | None = None  # what was reported when it stopped answering
    settled: threading.Event = field(default_factory=threading.Event)  # answered or failed

    @property
    def name(self) -> str:
        return self.channel.host.name


class ClusterSource:
    cluster = True

    def __init__(
        self,
        hosts: Sequence[Host],
        ssh: SshOptions,
        interval: float,
        sudo: bool = True,
        quiet: bool = False,
        report: bool = True,
        exit_on_error: bool = False,
        parallel: int = 32,
        on_failure: Callable[[HostError], None] | None = None,
    ) -> None:
        """``report``: log each host that stops answering (and comes back); a full-screen
        view shows it instead. ``quiet`` (``-q``) logs nothing of hosts. With
        ``exit_on_error`` (``-e``) the first host that fails is kept in ``failed`` and told
        to ``on_failure`` (from the source's own thread)."""
        remote = [*(["sudo", "-n"] if sudo else []), "genv", "usage", "serve", "--usage"]
        self.ssh = ssh
        self.interval = interval
        self.report = report and not quiet
        self.exit_on_error = exit_on_error
        self.parallel = parallel
        self.on_failure = on_failure
        self.failed: HostError | None = None
        self._hosts = [
            _Host(AgentChannel(h, ssh, remote), HostSample(h.name, None, error=CONNECTING))
            for h in hosts
        ]
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="genv-cluster", daemon=True
        )
        self._tasks: list[asyncio.Task[None]] = []

    # -- the caller's side -------------------------------------------------------------

    def start(self, wait: bool = True) -> ClusterSource:
        """Connect to every host; ``wait`` until each has answered or failed once (at most
        the time to connect and answer, twice ``-t``)."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._begin(), self._loop).result(10)
        if wait:
            deadline = time.monotonic() + 2 * self.ssh.timeout + 5
            for host in self._hosts:
                host.settled.wait(max(0.0, deadline - time.monotonic()))
        return self

    def collect(self) -> list[HostSample]:
        """What every host said last, in the order given; never waits for a host."""
        with self._lock:
            return [host.sample for host in self._hosts]

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        ending = asyncio.run_coroutine_threadsafe(self._end(), self._loop)
        with contextlib.suppress(Exception):
            ending.result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    # -- in the source's thread --------------------------------------------------------

    async def _begin(self) -> None:
        self._gate = asyncio.Semaphore(max(1, self.parallel))  # handshakes at once
        self._tasks = [asyncio.ensure_future(self._follow(host)) for host in self._hosts]

    async def _end(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(
            *(host.channel.close() for host in self._hosts), return_exceptions=True
        )

    async def _follow(self, host: _Host) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not host.channel.open and not await self._connect(host):
                await asyncio.sleep(self._backoff(host))
                continue
            began = loop.time()
            try:
                await self._ask(host)
            except Exception as error:  # a bug must not end the following of this host
                log.exception("reading %s failed", host.name)
                self._failed(host, HostError(host.channel.host, f"internal error: {error}"))
            if host.channel.open:
                await asyncio.sleep(max(0.0, self.interval - (loop.time() - began)))
            else:
                await asyncio.sleep(self._backoff(host))

    @staticmethod
    def _backoff(host: _Host) -> float:
        return min(MAX_BACKOFF, 2.0 ** max(0, host.failures - 1))

    async def _connect(self, host: _Host) -> bool:
        async with self._gate:
            try:
                hello = await host.channel.connect()
                wire.decode_host_facts(hello)
                serves = hello.get("serves")
                if not isinstance(serves, list) or USAGE not in serves:
                    raise HostError(
                        host.channel.host,
                        "the genv there is too old for genv remote monitor and top (its genv "
                        "usage serve has no --usage): install this genv on it",
                        "old-genv",
                    )
            except wire.WireError as error:
                await host.channel.close()
                self._failed(
                    host,
                    HostError(
                        host.channel.host,
                        f"too old or not this genv ({error}): install this genv on it",
                        "old-genv",
                    ),
                )
                return False
            except HostError as error:
                await host.channel.close()
                self._failed(host, error)
                return False
        return True

    async def _ask(self, host: _Host) -> None:
        try:
            answer = await host.channel.request({"op": USAGE, "full": host.usage is None})
        except HostError as error:
            self._failed(host, error)
            return
        if "error" in answer:  # it answers, and cannot read its GPUs or its state
            self._failed(host, HostError(host.channel.host, str(answer["error"])[:300], "host"))
            return
        try:
            if answer.get("same") is True and host.usage is not None:
                usage = replace(host.usage, time=wire.number(answer.get("time")))
            else:
                usage = decode_usage(answer.get("usage"))
        except wire.WireError as error:
            await host.channel.close()
            self._failed(
                host,
                HostError(
                    host.channel.host,
                    f"sent a usage sample this genv cannot read ({error}); left out",
                    "protocol",
                ),
            )
            return
        host.usage = usage
        self._set(host, HostSample(host.name, usage))
        if host.down is not None and self.report:
            log.info("resolved: %s", host.down)
        host.down = None
        host.failures = 0

    def _set(self, host: _Host, sample: HostSample) -> None:
        with self._lock:
            host.sample = sample
        host.settled.set()

    def _failed(self, host: _Host, error: HostError) -> None:
        host.usage = None
        host.failures += 1
        self._set(
            host,
            HostSample(host.name, None, error=str(error), installed=error.kind != "no-genv"),
        )
        if host.down is None:  # once per outage, whatever it says later
            host.down = str(error)
            if self.report:
                log.warning("%s", error)
        else:
            log.debug("%s", error)
        if self.exit_on_error and self.failed is None:
            self.failed = error
            if self.on_failure is not None:
                self.on_failure(error)
