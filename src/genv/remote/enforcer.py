"""``genv remote enforce``: one enforcement cycle over many hosts, every ``interval``.

Each host runs its agent (``sudo -n genv usage serve``) on an SSH session that stays open,
so a cycle is one round trip per host, all in parallel: ask every host for a snapshot, plan
(genv.enforce.cluster: the local rules per host, per-user limits over all hosts together),
send each host the part of the plan that concerns it, print what was done. A host that does
not answer within ``-t`` is reported once (and once when it is back), left out of this cycle
and of the cross-host counts, and connected again later (with a growing pause, up to a
minute, while it keeps failing). Only this cycle's snapshots are ever planned from: a plan is
sent with the id of the snapshot it was made from, and the host refuses it if that is not its
latest.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from genv.enforce.cluster import ClusterPlan, ClusterRules, HostView, plan_cluster
from genv.enforce.executor import Kill, Outcome
from genv.enforce.findings import Termination
from genv.enforce.plan import Plan
from genv.enforce.report import CycleReport, ProblemLog
from genv.remote import wire
from genv.remote.agent import IN_PROGRESS, STALE
from genv.remote.channel import AgentChannel
from genv.remote.hosts import Host
from genv.remote.report import ClusterReporter, ClusterSinks
from genv.remote.ssh import HostError, SshOptions
from genv.system import logs

if TYPE_CHECKING:
    from genv.enforce.report import Sink

log = logs.logger("genv.remote")
MAX_BACKOFF = 60.0


@dataclass
class _HostState:
    channel: AgentChannel
    view: HostView | None = None  # what the host said last, for "same" answers
    snapshot: str | None = None  # the id of this cycle's snapshot
    facts: wire.HostFacts | None = None
    failures: int = 0
    retry_at: float = 0.0
    connecting: asyncio.Task[Any] | None = None


class ClusterEnforcer:
    def __init__(
        self,
        hosts: Sequence[Host],
        ssh: SshOptions,
        rules: ClusterRules,
        reporter: ClusterReporter,
        grace: float = 10.0,
        dry_run: bool = False,
        exit_on_error: bool = False,
        quiet: bool = False,
        parallel: int = 32,
    ) -> None:
        remote = ["sudo", "-n", "genv", "usage", "serve", "--grace", f"{grace:g}"]
        if dry_run:
            remote.append("--dry-run")
        self.hosts = {h.name: _HostState(AgentChannel(h, ssh, remote)) for h in hosts}
        self.rules = rules
        self.reporter = ClusterSinks(reporter)
        self.grace = grace
        self.dry_run = dry_run
        self.exit_on_error = exit_on_error
        self.quiet = quiet
        self.gate = asyncio.Semaphore(max(1, parallel))
        self.problems = ProblemLog()
        self.failed: HostError | None = None  # with -e: the error that ends the run
        self._signalled: dict[str, dict[tuple[int, int | None], Termination]] = {}
        self._memo: tuple[tuple[object, ...], ClusterPlan] | None = None
        self._findings: tuple[ClusterPlan, Plan] | None = None  # for the sinks, per plan
        self._stop = asyncio.Event()
        self.cycles = 0
        self._host_errors: dict[str, str] = {}  # host -> why it cannot be used now
        self._state_problems: dict[str, dict[str, str]] = {}  # what each host reported

    def add_reporter(self, sink: Sink) -> None:
        """Tell ``sink`` too of everything the daemon does (the metrics of --metrics-port),
        as the local daemon does (Enforcer.add_reporter)."""
        self.reporter.add(sink)

    # -- connections -------------------------------------------------------------------

    async def _connect(self, name: str) -> None:
        state = self.hosts[name]
        async with self.gate:
            try:
                hello = await state.channel.connect()
                state.facts = wire.decode_host_facts(hello)
                if hello.get("root") is not True:
                    raise HostError(
                        state.channel.host,
                        "genv usage serve does not run as root there; it needs sudo -n to work",
                        "sudo",
                    )
            except wire.WireError as error:
                await state.channel.close()
                self._host_failed(
                    name,
                    HostError(
                        state.channel.host,
                        f"too old or not this genv ({error}): install this genv on it",
                        "old-genv",
                    ),
                )
            except HostError as error:
                await state.channel.close()
                self._host_failed(name, error)
            else:
                state.failures = 0

    def _host_failed(self, name: str, error: HostError) -> None:
        state = self.hosts[name]
        state.view = None
        state.snapshot = None
        state.failures += 1
        state.retry_at = time.monotonic() + min(MAX_BACKOFF, 2.0 ** (state.failures - 1))
        self._host_errors[name] = str(error)
        self._state_problems.pop(name, None)
        if self.exit_on_error and self.failed is None:
            self.failed = error

    async def _ensure_connected(self, wait: bool) -> None:
        """Connect hosts that have no session; ``wait`` for them (one-shot runs), else let
        the connections come up in the background and join a later cycle."""
        now = time.monotonic()
        for name, state in self.hosts.items():
            if state.channel.open or (state.connecting and not state.connecting.done()):
                continue
            if state.retry_at > now:
                continue
            state.connecting = asyncio.ensure_future(self._connect(name))
        if wait:
            tasks = [s.connecting for s in self.hosts.values() if s.connecting]
            if tasks:
                await asyncio.gather(*tasks)

    # -- one cycle ---------------------------------------------------------------------

    async def cycle(self, wait_for_connections: bool = False) -> ClusterPlan | None:
        started = time.monotonic()
        try:
            plan, answered, reused = await self._cycle(wait_for_connections)
        except Exception:  # (a cancelled cycle is no failed one)
            self.reporter.cycle(CycleReport(started, time.monotonic() - started, False, "failed"))
            raise
        if self.failed is not None:
            return None
        duration = time.monotonic() - started
        self.reporter.cycle(
            CycleReport(
                started,
                duration,
                acted=plan is not None,
                skipped=None if plan is not None else "no host answered",
                findings=len(plan.findings) if plan else 0,
                terminations=sum(len(p.terminations) for p in plan.plans.values()) if plan else 0,
                detachments=sum(len(p.detachments) for p in plan.plans.values()) if plan else 0,
                reused=reused,
                plan=self._plan_of(plan) if plan else None,
                hosts_not_answering=len(self.hosts) - answered,
            )
        )
        self.cycles += 1
        log.debug(
            "cycle %d: %d of %d hosts answered; %.3f s",
            self.cycles,
            answered,
            len(self.hosts),
            duration,
        )
        return plan

    async def _cycle(self, wait_for_connections: bool) -> tuple[ClusterPlan | None, int, bool]:
        """This cycle's plan (None when no host answered), how many hosts answered, and
        whether the plan of last cycle was reused."""
        await self._ensure_connected(wait_for_connections)
        ready = [
            n
            for n, s in self.hosts.items()
            if s.channel.open
            and s.facts is not None
            and not (s.connecting and not s.connecting.done())
        ]
        answers = await asyncio.gather(*(self._snapshot(n) for n in ready))
        views = [view for view in answers if view is not None]
        answered = {view.host for view in views}
        for name in list(self._state_problems):
            if name not in answered:  # unknown this cycle, not gone
                del self._state_problems[name]
        self._report_problems()
        if self.failed is not None:
            return None, len(views), False
        key = tuple(views)
        reused = (
            self._memo is not None
            and len(key) == len(self._memo[0])
            and all(a is b for a, b in zip(key, self._memo[0], strict=True))
        )
        if reused:
            assert self._memo is not None
            plan = self._memo[1]
        else:
            plan = plan_cluster(views, self.rules)
            self._memo = (key, plan)
        await self._execute(plan, {v.host for v in views})
        return (plan if views else None), len(views), reused

    def _plan_of(self, plan: ClusterPlan) -> Plan:
        """The cluster's plan as the sinks know plans (its findings, every host's actions):
        the same object while the plan is reused, so that they recount nothing."""
        if self._findings is None or self._findings[0] is not plan:
            parts = list(plan.plans.values())
            self._findings = (
                plan,
                Plan(
                    tuple(cf.finding for cf in plan.findings),
                    tuple(t for p in parts for t in p.terminations),
                    tuple(d for p in parts for d in p.detachments),
                ),
            )
        return self._findings[1]

    async def _snapshot(self, name: str) -> HostView | None:
        state = self.hosts[name]
        try:
            answer = await state.channel.request({"op": "snapshot", "full": state.view is None})
        except HostError as error:
            self._host_failed(name, error)
            return None
        self._events(name, answer)
        if "error" in answer:
            state.view = None
            self._host_errors[name] = f"{name}: {str(answer['error'])[:300]}"
            return None
        try:
            state.snapshot = wire._text(answer.get("snapshot"), 64)
            if answer.get("same") is True and state.view is not None:
                problems = self._state_problems.get(name, {})
            else:
                assert state.facts is not None
                observation = wire.decode_observation(answer.get("observation") or {})
                state.view = HostView(
                    name, observation, state.facts.boot_time, state.facts.clock_ticks
                )
                problems = {
                    f"{name}|{key}": f"{name}: {line}"
                    for key, line in wire.decode_problems(answer).items()
                }
        except wire.WireError as error:
            await state.channel.close()
            self._host_failed(
                name,
                HostError(
                    state.channel.host,
                    f"sent a snapshot this genv cannot read ({error}); left alone",
                    "protocol",
                ),
            )
            return None
        self._state_problems[name] = problems
        self._host_errors.pop(name, None)
        return state.view

    def _report_problems(self) -> None:
        """Each problem once when it appears and once when it is gone (ProblemLog)."""
        merged: dict[str, str] = {}
        if not self.quiet:
            merged.update({f"host:{name}": line for name, line in self._host_errors.items()})
        for problems in self._state_problems.values():
            merged.update(problems)
        self.problems.update(merged)

    # -- carrying a plan out -----------------------------------------------------------

    async def _execute(self, plan: ClusterPlan, answered: set[str]) -> None:
        outcomes: dict[tuple[str, int, int | None], str] = {}
        detached: dict[str, bool] = {}
        hosts = [h for h, p in plan.plans.items() if not p.empty and h in answered]
        if self.dry_run:
            for host in hosts:
                for t in plan.plans[host].terminations:
                    outcomes[(host, t.process.pid, t.process.facts.start)] = Outcome.DRY_RUN.value
                detached[host] = True
        else:
            results = await asyncio.gather(*(self._send_plan(h, plan) for h in hosts))
            for host, (host_outcomes, ok) in zip(hosts, results, strict=True):
                outcomes.update(host_outcomes)
                detached[host] = ok
        self._print(plan, outcomes, detached)

    async def _send_plan(
        self, host: str, plan: ClusterPlan
    ) -> tuple[dict[tuple[str, int, int | None], str], bool]:
        state = self.hosts[host]
        part = plan.plans[host]
        assert state.facts is not None
        request = {
            "op": "execute",
            "snapshot": state.snapshot,
            "terminations": [
                {
                    "pid": t.process.pid,
                    "start": t.process.facts.start,
                    "boot_id": state.facts.boot_id,
                    "rule": t.rule,
                    "reason": t.reason,
                    "devices": list(t.devices),
                }
                for t in part.terminations
            ],
            "detachments": [
                {
                    "uid": d.uid,
                    "eid": d.eid,
                    "device": d.device_index,
                    "user": d.username,
                    "rule": d.rule,
                    "time": _attachment_time(state.view, d.uid, d.eid, d.device_index),
                }
                for d in part.detachments
            ],
        }
        try:
            answer = await state.channel.request(request)
        except HostError as error:
            self._host_failed(host, error)
            self._report_problems()
            return {}, False
        self._events(host, answer)
        if answer.get("error") == STALE:
            log.warning(
                "%s: the plan was refused: it was made from an older snapshot than "
                "the host's latest (done again next cycle)",
                host,
            )
            return {}, False
        found: dict[tuple[str, int, int | None], str] = {}
        signalled = self._signalled.setdefault(host, {})
        by_identity = {(t.process.pid, t.process.facts.start): t for t in part.terminations}
        for item in answer.get("terminations") or []:
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], str)):
                continue
            pid, start, outcome = item
            found[(host, pid, start)] = outcome
            if outcome == Outcome.SIGNALLED.value and (pid, start) in by_identity:
                signalled[(pid, start)] = by_identity[(pid, start)]
        if answer.get("detach_error"):
            log.error(
                "%s: could not detach, will try again next cycle: %s",
                host,
                str(answer["detach_error"])[:300],
            )
        return found, answer.get("detached") is not False

    def _events(self, host: str, answer: dict[str, Any]) -> None:
        """Kills after the grace period, as the host's agent reports them."""
        signalled = self._signalled.get(host, {})
        for event in answer.get("events") or []:
            if not isinstance(event, dict):
                continue
            pid, start = event.get("pid"), event.get("start")
            if not isinstance(pid, int) or not isinstance(start, (int, type(None))):
                continue
            termination = signalled.pop((pid, start), None)
            if termination is None:
                continue
            outcome = event.get("outcome")
            if outcome == Outcome.SIGNALLED.value:
                self.reporter.at(host).killing(Kill(termination, Outcome.SIGNALLED, self.grace))
            elif outcome in {o.value for o in Outcome}:
                self.reporter.at(host).outcome(termination, Outcome(outcome))

    def _print(
        self,
        plan: ClusterPlan,
        outcomes: dict[tuple[str, int, int | None], str],
        detached: dict[str, bool],
    ) -> None:
        def outcome_of(host: str, t: Termination) -> str | None:
            return outcomes.get((host, t.process.pid, t.process.facts.start))

        for cf in plan.findings:
            if (
                cf.terminations
                and not cf.detachments
                and all(outcome_of(h, t) == IN_PROGRESS for h, t in cf.terminations)
            ):
                continue
            self.reporter.at(cf.host).finding(cf.finding)
        for host, part in plan.plans.items():
            for t in part.terminations:
                outcome = outcome_of(host, t)
                if outcome is None or outcome == IN_PROGRESS:
                    continue
                self.reporter.at(host).terminating(t)
                if outcome in {o.value for o in Outcome}:
                    self.reporter.at(host).outcome(t, Outcome(outcome))
            if part.detachments and detached.get(host):
                for d in part.detachments:
                    self.reporter.at(host).detaching(d)
        self.reporter.at(None)

    # -- running -----------------------------------------------------------------------

    async def run_once(self) -> int:
        """``--interval 0``: connect, one cycle, wait up to the grace period for the
        processes signalled, SIGKILL what is left, disconnect."""
        try:
            plan = await self.cycle(wait_for_connections=True)
            pending = [h for h, s in self._signalled.items() if s]
            if pending and not self.dry_run:
                await asyncio.gather(*(self._finish(h) for h in pending))
        finally:
            await self.close()
        if self.failed is not None or plan is None:
            return 1
        answered = sum(1 for s in self.hosts.values() if s.view is not None)
        return 0 if answered else 1

    async def _finish(self, host: str) -> None:
        state = self.hosts[host]
        channel = state.channel
        saved = channel.ssh
        try:
            channel.ssh = replace(saved, timeout=saved.timeout + self.grace)
            answer = await channel.request({"op": "finish", "wait": self.grace})
            self._events(host, answer)
        except HostError as error:
            self._host_failed(host, error)
            self._report_problems()
        finally:
            channel.ssh = saved

    async def run_forever(self, interval: float) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    await self.cycle(wait_for_connections=self.cycles == 0)
                except Exception:  # a bug must not end enforcement on every host
                    log.exception("enforcement cycle failed; trying again next cycle")
                if self.failed is not None:
                    return 1
                remaining = interval - (time.monotonic() - started)
                if remaining > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), remaining)
        finally:
            await self.close()
        return 0

    async def close(self) -> None:
        for state in self.hosts.values():
            if state.connecting and not state.connecting.done():
                state.connecting.cancel()
        await asyncio.gather(
            *(s.channel.close() for s in self.hosts.values()), return_exceptions=True
        )


def _attachment_time(view: HostView | None, uid: int, eid: str, index: int) -> float | None:
    if view is None:
        return None
    for a in view.observation.attachments:
        if a.uid == uid and a.eid == eid and a.device_index == index:
            return a.time
    return None
