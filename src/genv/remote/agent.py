"""The host side of ``genv remote``: ``genv usage snapshot``, ``execute`` and ``serve``.

``serve`` is the long-lived agent of ``genv remote enforce``: started once per host through
``ssh HOST sudo -n genv usage serve``, it answers JSON lines on stdin/stdout for as long as
the channel stays open, so that a cycle costs one round trip per host and no start-up. It
observes exactly as the local daemon does (the same Observer, with its process watcher, so an
unchanged machine reads almost nothing) and carries plans out with the local executor: every
termination names a process of the agent's latest snapshot by pid, start and boot id, and
the Terminator checks that identity again, through a pidfd, before it signals. A plan made
from any other snapshot than the latest is refused whole. SIGKILL after the grace period is
the agent's own business, on time, between requests; the controller hears of it with its
next reply.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import socket
import sys
import time
from typing import Any, BinaryIO, Protocol

import genv
from genv.backends.base import BackendError
from genv.domain.models import Attachment
from genv.domain.observation import Observation, ObservedProcess
from genv.enforce.daemon import _problems_of
from genv.enforce.executor import Detacher, Outcome, Terminator
from genv.enforce.findings import Detachment, Termination
from genv.enforce.observe import Observer
from genv.remote import wire
from genv.store import StoreError
from genv.system import procfs

IN_PROGRESS = "in-progress"
STALE = "stale"


def host_facts() -> dict[str, Any]:
    """What every answer of this host starts with (see wire.HostFacts)."""
    uptime = time.clock_gettime(time.CLOCK_BOOTTIME)
    return {
        "protocol": wire.PROTOCOL,
        "genv": genv.__version__,
        "hostname": socket.gethostname(),
        "boot_id": procfs.boot_id(),
        "boot_time": time.time() - uptime,
        "clock_ticks": procfs.clock_ticks(),
        "root": os.geteuid() == 0,
    }


class HostAgent:
    """Snapshots and plans for one host; ``long_lived`` keeps a process watcher between
    cycles (``serve``), a one-shot command goes without."""

    serves: tuple[str, ...] = ("snapshot", "execute", "finish")

    def __init__(self, grace: float = 10.0, dry_run: bool = False, long_lived: bool = True):
        from genv.backends import open_backend
        from genv.store import Store
        from genv.system.proc_events import ProcessEvents
        from genv.system.watch import ProcessWatcher, raise_open_file_limit

        events = None
        watcher: ProcessWatcher | None = None
        if long_lived:  # as genv enforce: the GPU processes followed, the store's own watcher
            raise_open_file_limit()
            watcher = ProcessWatcher()
            store = Store(watcher=ProcessWatcher())
            events = ProcessEvents.open()
        else:
            store = Store()
        self.observer = Observer(open_backend(), store, watcher, events)
        self.dry_run = dry_run
        self.terminator = Terminator(grace, dry_run=dry_run)
        self.detacher = Detacher(store, dry_run=dry_run)
        self._ids = itertools.count(1)
        self.snapshot_id: str | None = None
        self.observation: Observation | None = None
        self._events: list[dict[str, Any]] = []

    # -- snapshot ------------------------------------------------------------------------

    def snapshot(self, full: bool = True) -> dict[str, Any]:
        """This cycle's snapshot; ``same`` (unless ``full``) when it is the very observation
        of last time: the controller then keeps what it decoded, and it is a fresh look all
        the same."""
        self.snapshot_id = f"{os.getpid()}-{next(self._ids)}"
        try:
            observation, gpus, state = self.observer.observe()
        except (BackendError, StoreError) as error:
            self.observation = None
            return {"error": f"cannot take a snapshot this cycle: {error}"}
        if not self.dry_run:
            # (a state that cannot be used is said in the problems below)
            with contextlib.suppress(StoreError):
                self.observer.store.publish_holdings(state)
        same = observation is self.observation
        self.observation = observation
        answer: dict[str, Any] = {"snapshot": self.snapshot_id, "partial": gpus.partial}
        if same and not full:
            answer["same"] = True
        else:
            answer["observation"] = wire.encode_observation(observation)
            answer["problems"] = _problems_of(observation, state, gpus.errors)
        return answer

    # -- execute -------------------------------------------------------------------------

    def execute(self, request: dict[str, Any]) -> dict[str, Any]:
        """Carry out a plan made from the latest snapshot; refuse any other."""
        observation = self.observation
        if observation is None or request.get("snapshot") != self.snapshot_id:
            return {"error": STALE}
        boot = procfs.boot_id()
        by_identity = {(p.pid, p.facts.start): p for p in observation.processes}
        outcomes = []
        for item in _items(request.get("terminations")):
            pid, start = item.get("pid"), item.get("start")
            process = None
            if item.get("boot_id") == boot and isinstance(pid, int) and isinstance(start, int):
                process = by_identity.get((pid, start))
            if process is None:
                outcomes.append([pid, start, Outcome.REFUSED.value])
                continue
            termination = _termination(process, item)
            if self.terminator.in_progress(termination):
                outcomes.append([pid, start, IN_PROGRESS])
                continue
            outcomes.append([pid, start, self.terminator.terminate(termination).value])
        answer: dict[str, Any] = {"terminations": outcomes}
        detachments, taken = _detachments(request.get("detachments"), observation.attachments)
        if detachments:
            error = self.detacher.detach(detachments, taken)
            answer["detached"] = error is None
            if error:
                answer["detach_error"] = error
        return answer

    def escalate(self, now_all: bool = False) -> None:
        for kill in self.terminator.escalate_due(now_all):
            facts = kill.termination.process.facts
            self._events.append(
                {
                    "event": "kill",
                    "pid": facts.pid,
                    "start": facts.start,
                    "outcome": kill.outcome.value,
                }
            )

    def finish(self, wait: float) -> dict[str, Any]:
        """One-shot runs: wait up to ``wait`` seconds for the signalled processes, SIGKILL
        what is left."""
        if self.terminator.pending:
            self.terminator.wait(wait)
            self.escalate(now_all=True)
        return {}

    def take_events(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events

    def close(self) -> None:
        self.terminator.close()
        if self.observer.events is not None:
            self.observer.events.close()

    # -- as the long-lived agent (serve) ---------------------------------------------------

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        answer: dict[str, Any]
        if op == "snapshot":
            answer = self.snapshot(full=request.get("full") is not False)
        elif op == "execute":
            answer = self.execute(request)
        elif op == "finish":
            wait = request.get("wait")
            answer = self.finish(float(wait) if isinstance(wait, (int, float)) else 0.0)
        else:
            answer = {"error": f"unknown request {str(op)[:40]!r}"}
        answer["op"] = op if isinstance(op, str) else None
        answer["id"] = request.get("id")
        self.escalate()
        answer["events"] = self.take_events()
        return answer

    def next_deadline(self) -> float | None:
        return self.terminator.next_deadline()

    def tick(self) -> None:
        self.escalate()


def _items(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    return [item for item in value[: wire.MAX_ITEMS] if isinstance(item, dict)]


def _termination(process: ObservedProcess, item: dict[str, Any]) -> Termination:
    devices = item.get("devices")
    indices = tuple(i for i in devices if isinstance(i, int)) if isinstance(devices, list) else ()
    return Termination(
        process,
        str(item.get("rule", ""))[:64],
        str(item.get("reason", ""))[: wire.MAX_TEXT],
        indices or process.devices,
    )


def _detachments(
    value: Any, attachments: tuple[Attachment, ...]
) -> tuple[list[Detachment], list[Attachment]]:
    """The detachments asked for that name an attachment of the latest snapshot, that very
    one (same time: attached again since then, it is not taken)."""
    known = {(a.uid, a.eid, a.device_index, a.time): a for a in attachments}
    detachments, taken = [], []
    for item in _items(value):
        key = (item.get("uid"), item.get("eid"), item.get("device"), item.get("time"))
        if not all(isinstance(part, (int, float, str)) for part in key):
            continue
        attachment = known.get(key)  # type: ignore[arg-type]
        if attachment is None:
            continue
        taken.append(attachment)
        detachments.append(
            Detachment(
                attachment.eid,
                attachment.uid,
                str(item.get("user", ""))[:256],
                attachment.device_index,
                str(item.get("rule", ""))[:64],
                "",
            )
        )
    return detachments, taken


# -- the long-lived agent ------------------------------------------------------------------


class Agent(Protocol):
    """What ``serve`` answers with: HostAgent (enforcement) or a usage agent (monitors)."""

    serves: tuple[str, ...]  # the requests it answers, told in its greeting

    def answer(self, request: dict[str, Any]) -> dict[str, Any]: ...

    def next_deadline(self) -> float | None:
        """When ``tick`` has something to do next (None: only when asked)."""
        ...

    def tick(self) -> None: ...

    def close(self) -> None: ...


def serve(agent: Agent, stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Answer requests until stdin closes; the agent's own business (SIGKILL on time) in
    between."""
    stdout.write(wire.dumps({"op": "hello", **host_facts(), "serves": list(agent.serves)}))
    stdout.flush()
    fd = stdin.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    pending = b""
    try:
        while True:
            deadline = agent.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic()) * 1000
            if poller.poll(timeout):
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return 0
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    stdout.write(wire.dumps(handle(agent, line)))
                    stdout.flush()
                if len(pending) > wire.MAX_LINE:
                    return 1  # no request is that long: not a controller of this genv
            agent.tick()
    finally:
        agent.close()


def handle(agent: Agent, line: bytes) -> dict[str, Any]:
    """One answer; a bug answers an error line rather than end the agent (and with it
    enforcement on this host until the controller connects again)."""
    try:
        try:
            request = wire.loads(line)
        except wire.WireError as error:
            return {"error": f"bad request: {error}"}
        return agent.answer(request)
    except Exception as error:  # noqa: BLE001 - see above
        return {
            "error": f"internal error in genv usage serve: {type(error).__name__}: {error}"[:500],
            "id": None,
            "events": [],
        }


# -- one-shot commands ---------------------------------------------------------------------


def snapshot_once(kind: str | None) -> dict[str, Any]:
    """``genv usage snapshot --format json [--type devices|envs|processes]``."""
    answer = host_facts()
    if kind in ("devices", "envs"):
        answer.update(_listing(kind))
        return answer
    agent = HostAgent(long_lived=False, dry_run=True)
    answer.update(agent.snapshot())
    return answer


def _listing(kind: str) -> dict[str, Any]:
    from genv.backends import open_backend
    from genv.store import Store

    state = Store().read()
    answer: dict[str, Any] = {"problems": [p.line() for p in state.problems]}
    if kind == "envs":
        answer["environments"] = [wire.encode_environment(e) for e in state.environments]
        return answer
    devices = open_backend().snapshot(processes=False).devices
    answer["devices"] = [[d.index, d.uuid, d.name, d.total_memory, d.used_memory] for d in devices]
    answer["available"] = [d.index for d in devices if not state.held_on(d.index)]
    answer["attachments"] = [wire.encode_attachment(a) for a in state.attachments]
    answer["environments"] = [wire.encode_environment(e) for e in state.environments]
    return answer


def execute_once(plan: dict[str, Any], stdout: BinaryIO = sys.stdout.buffer) -> int:
    """``genv usage execute``: a plan on stdin, checked against a snapshot taken now (never
    an older one): only processes and attachments it still shows, by identity, are acted on."""
    grace = plan.get("grace")
    agent = HostAgent(
        grace=float(grace) if isinstance(grace, (int, float)) else 10.0,
        long_lived=False,
        dry_run=plan.get("dry_run") is True,
    )
    taken = agent.snapshot()
    if "error" in taken:
        stdout.write(wire.dumps({**host_facts(), **taken}))
        return 1
    answer = agent.execute({**plan, "snapshot": agent.snapshot_id})
    agent.finish(agent.terminator.grace)
    answer["events"] = agent.take_events()
    agent.close()
    stdout.write(wire.dumps({**host_facts(), **answer}))
    return 0
