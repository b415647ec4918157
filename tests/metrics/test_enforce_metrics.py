"""``genv enforce --metrics-port``: the daemon's own metrics, in-process and through a real
Prometheus; a scrape never waits for a cycle."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import threading
import time

import pytest

import genv
from genv.domain.models import GpuSnapshot
from genv.domain.observation import Membership, Observation, ObservedProcess, ProcessFacts, Usage
from genv.enforce.daemon import Enforcer
from genv.enforce.executor import Detacher, Kill, Outcome, Terminator
from genv.enforce.findings import Detachment, Finding, Termination
from genv.enforce.plan import Plan
from genv.enforce.report import CycleReport, Reporter, Reporters
from genv.enforce.rules import RuleConfig
from genv.metrics.enforcement import EnforcementMetrics
from genv.store import State

from promkit import free_port, get, samples_of, wait_http

IGNORES_SIGTERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(120)\n"
)


def termination(pid: int, rule: str = "non-env-processes", user: str = "alice") -> Termination:
    facts = ProcessFacts(pid, 7, 1001, user, "python", None, exe="/usr/bin/python")
    process = ObservedProcess(facts, (Usage(0, 1),), Membership.NO_ENV)
    return Termination(process, rule, "because", (0,))


def value(page: bytes, name: str, **labels: str) -> float | None:
    found = [
        v
        for got, v in samples_of(page).get(name, [])
        if all(got.get(k) == x for k, x in labels.items())
    ]
    assert len(found) <= 1, found
    return found[0] if found else None


def test_the_sink_counts_the_daemons_events():
    metrics = EnforcementMetrics(clock=lambda: 1234.0)
    first = termination(10)
    metrics.terminating(first)
    metrics.outcome(first, Outcome.SIGNALLED)
    denied = termination(11, user="bob")
    metrics.terminating(denied)
    metrics.outcome(denied, Outcome.DENIED)
    metrics.killing(Kill(first, Outcome.SIGNALLED, 10.0))  # still there after the grace period
    gone = termination(12)
    metrics.outcome(gone, Outcome.GONE)  # a SIGKILL that found it gone (no terminating)
    metrics.detaching(Detachment("e1", 1001, "alice", 0, "max-devices-per-user", "why"))
    finding = Finding("env-memory", "Environment e1 is using ...")
    plan = Plan((finding, finding, Finding("env-devices", "...")), (), ())
    metrics.cycle(CycleReport(5.0, 0.002, acted=True, plan=plan))
    metrics.cycle(CycleReport(6.0, 0.004, acted=False, skipped="gpus"))
    page = metrics.page()

    terminations = "genv_enforce_terminations_total"
    assert value(page, terminations, rule="non-env-processes", user="alice") == 1
    assert value(page, terminations, user="bob") is None  # denied: nothing was sent
    outcomes = "genv_enforce_signal_outcomes_total"
    assert value(page, outcomes, signal="SIGTERM", outcome="permission-denied") == 1
    assert value(page, outcomes, signal="SIGKILL", outcome="gone") == 1
    assert value(page, outcomes, signal="SIGKILL", outcome="signalled") == 1
    assert value(page, "genv_enforce_kills_total", user="alice") == 1
    assert value(page, "genv_enforce_detachments_total", rule="max-devices-per-user") == 1
    assert value(page, "genv_enforce_violations", rule="env-memory") == 2
    assert value(page, "genv_enforce_violations", rule="env-devices") == 1
    assert value(page, "genv_enforce_violations", rule="non-env-processes") == 0
    assert value(page, "genv_enforce_cycles_total") == 2
    assert value(page, "genv_enforce_cycle_errors_total", reason="observe") == 1
    assert value(page, "genv_enforce_cycle_duration_seconds_count") == 2
    assert value(page, "genv_enforce_cycle_duration_seconds_bucket", le="0.0025") == 1
    # the complete one, when it began (the clock says 1234 at its end)
    assert value(page, "genv_enforce_last_cycle_timestamp_seconds") == 1234.0 - 0.002
    last = "genv_enforce_last_action_timestamp_seconds"
    assert value(page, last, action="terminate", user="alice") == 1234.0
    assert value(page, last, action="detach", user="alice") == 1234.0
    assert value(page, "genv_enforce_hosts_not_answering") == 0
    assert value(page, "process_cpu_seconds_total") is not None


def test_every_scrape_shows_what_happened_since_the_last_one():
    """The series that change only when the daemon acts are rendered again only then: each
    kind of change must reach the next scrape."""
    now = [100.0]
    metrics = EnforcementMetrics(clock=lambda: now[0])
    quiet = CycleReport(1.0, 0.0003, acted=True, plan=Plan((), (), ()))
    metrics.cycle(quiet)
    page = metrics.page()
    assert value(page, "genv_enforce_violations", rule="env-devices") == 0
    assert value(page, "genv_enforce_cycles_total") == 1
    assert value(page, "genv_enforce_cycle_duration_seconds_bucket", le="0.0005") == 1
    assert value(page, "genv_enforce_cycle_duration_seconds_bucket", le="0.00025") == 0

    metrics.cycle(
        CycleReport(2.0, 0.02, acted=True, plan=Plan((Finding("env-devices", "x"),), (), ()))
    )
    page = metrics.page()
    assert value(page, "genv_enforce_violations", rule="env-devices") == 1
    assert value(page, "genv_enforce_cycles_total") == 2
    assert value(page, "genv_enforce_cycle_duration_seconds_count") == 2
    assert value(page, "genv_enforce_cycle_duration_seconds_bucket", le="0.025") == 2
    assert value(page, "genv_enforce_cycle_duration_seconds_sum") == pytest.approx(0.0203)
    assert value(page, "genv_enforce_last_cycle_timestamp_seconds") == pytest.approx(99.98)

    victim = termination(10)
    metrics.terminating(victim)
    metrics.outcome(victim, Outcome.SIGNALLED)
    assert value(metrics.page(), "genv_enforce_terminations_total", user="alice") == 1
    metrics.killing(Kill(victim, Outcome.GONE, 10.0))
    page = metrics.page()
    assert value(page, "genv_enforce_signal_outcomes_total", signal="SIGKILL", outcome="gone") == 1
    metrics.detaching(Detachment("e1", 1001, "alice", 0, "max-devices-per-user", "why"))
    assert value(metrics.page(), "genv_enforce_detachments_total", user="alice") == 1
    metrics.cycle(CycleReport(3.0, 0.001, acted=False, skipped="gpus"))
    assert value(metrics.page(), "genv_enforce_cycle_errors_total", reason="observe") == 1
    metrics.cycle(CycleReport(4.0, 0.001, acted=True, plan=quiet.plan))
    assert value(metrics.page(), "genv_enforce_violations", rule="env-devices") == 0
    metrics.cycle(CycleReport(5.0, 0.001, acted=True, plan=quiet.plan, hosts_not_answering=2))
    page = metrics.page()  # the same plan: only the hosts changed
    assert value(page, "genv_enforce_hosts_not_answering") == 2
    assert value(page, "genv_enforce_cycle_duration_seconds_bucket", le="+Inf") == 5


def test_a_page_that_failed_to_render_is_rendered_again_next_time():
    metrics = EnforcementMetrics()
    failures = [RuntimeError("once")]

    class FailsOnce:
        def describe(self):  # noqa: ANN202 - nothing to check at registration
            return []

        def collect(self):  # noqa: ANN202
            if failures:
                raise failures.pop()
            return []

    metrics.registry.register(FailsOnce())
    with pytest.raises(RuntimeError):
        metrics.page()
    assert value(metrics.page(), "genv_enforce_info", version=genv.__version__) == 1


def test_a_failing_sink_never_stops_the_reporter(caplog):
    class Broken:
        def finding(self, finding: Finding) -> None:
            raise RuntimeError("a bug in a sink")

    out = io.StringIO()
    reporter = Reporters(Reporter(stream=out), Broken())  # type: ignore[arg-type]
    reporter.finding(Finding("env-devices", "Process 1 from environment e is using ..."))
    reporter.finding(Finding("env-devices", "Process 2 from environment e is using ..."))
    assert out.getvalue().count("from environment e") == 2
    assert caplog.text.count("the report to Broken failed") == 1


class BlockingObserver:
    """A cycle that hangs (a stuck NVIDIA driver, say) until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def observe(self):
        self.entered.set()
        self.release.wait(30)
        empty = Observation(devices=(), processes=(), environments=(), attachments=())
        return empty, GpuSnapshot((), ()), State()


def test_a_scrape_never_waits_for_a_cycle():
    metrics = EnforcementMetrics()
    server = metrics.serve("127.0.0.1", 0)
    observer = BlockingObserver()
    enforcer = Enforcer(
        observer,  # type: ignore[arg-type]
        RuleConfig(),
        Terminator(1),
        Detacher(store=None),  # type: ignore[arg-type]
        Reporters(Reporter(stream=io.StringIO()), metrics),
    )
    enforcer.dry_run = True  # nothing to publish
    cycle = threading.Thread(target=enforcer.cycle)
    cycle.start()
    try:
        assert observer.entered.wait(10)
        started = time.monotonic()
        page = get(server.url, timeout=5)
        assert time.monotonic() - started < 2  # served while the cycle hangs
        assert value(page, "genv_enforce_cycles_total") == 0
    finally:
        observer.release.set()
        cycle.join(10)
    page = get(server.url)
    assert value(page, "genv_enforce_cycles_total") == 1
    assert value(page, "genv_enforce_cycle_duration_seconds_count") == 1
    server.close()


# -- the daemon, through a real Prometheus ------------------------------------------------------


@pytest.fixture
def users(linux_users, user_runtime, fake_machine):
    return linux_users


def test_prometheus_counts_what_the_daemon_did(
    users, fake_machine, run_genv, new_env, sleeper, genv_popen, prometheus
):
    alice, bob = users.alice, users.bob
    fake_machine.set_devices(2)
    new_env("ea", user=alice)
    assert run_genv("devices", "attach", "--eid", "ea", "--index", "0", user=alice).rc == 0
    port = free_port()
    daemon = genv_popen(
        "enforce",
        "--interval",
        "0.2",
        "--grace",
        "1",
        "--non-env-processes",
        "--max-devices-for-user",
        f"{alice.name}=0",
        "--metrics-port",
        str(port),
    )
    wait_http(f"http://127.0.0.1:{port}/metrics", alive=lambda: daemon.poll() is None)
    prometheus.start({"genv-enforce": [f"127.0.0.1:{port}"]})
    prometheus.wait_for("genv_enforce_cycles_total", lambda found: found and found[0][1] > 0)
    value = prometheus.value
    terminations = 'sum(genv_enforce_terminations_total{rule="non-env-processes"}) or vector(0)'
    assert value(terminations) == 0
    # alice may have no device: her attachment was taken back, and it said so
    prometheus.wait_for(
        f'genv_enforce_detachments_total{{rule="max-devices-per-user",user="{alice.name}"}}',
        lambda found: found and found[0][1] == 1,
    )

    # bob runs outside any environment: terminated; a process ignoring SIGTERM is killed
    outside = sleeper(user=bob)
    stubborn = subprocess.Popen(
        [sys.executable, "-c", IGNORES_SIGTERM],
        stdout=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline().strip() == "ready"
        fake_machine.processes = [
            {"pid": outside.pid, "device": 0, "used_memory": "1gi"},
            {"pid": stubborn.pid, "device": 1, "used_memory": "1gi"},
        ]
        fake_machine.write()
        outside.wait(timeout=30)
        assert outside.returncode == -signal.SIGTERM
        stubborn.wait(timeout=30)
        assert stubborn.returncode == -signal.SIGKILL
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
            stubborn.wait()
        stubborn.stdout.close()

    prometheus.wait_for(terminations, lambda found: found and found[0][1] == 2)
    assert value(f'genv_enforce_terminations_total{{user="{bob.name}"}}') == 1
    assert value('genv_enforce_terminations_total{user="root"}') == 1
    prometheus.wait_for(
        'genv_enforce_kills_total{rule="non-env-processes",user="root"}',
        lambda found: found and found[0][1] == 1,
    )
    last = "genv_enforce_last_action_timestamp_seconds"
    assert value(f'{last}{{action="terminate",user="{bob.name}"}}') > 0
    assert value("genv_enforce_violations", rule="non-env-processes") is not None
    assert value("genv_enforce_cycle_duration_seconds_count") > 0
    assert value("time() - genv_enforce_last_cycle_timestamp_seconds") < 30
    assert value("sum(genv_enforce_cycle_errors_total)") == 0
    assert value("genv_enforce_dry_run") == 0

    daemon.send_signal(signal.SIGTERM)
    out, err = daemon.communicate(timeout=20)
    assert daemon.returncode == 0, err
    assert "Traceback" not in err
    assert f"Terminating process {outside.pid}" in out


def test_a_port_in_use_is_one_line(fake_machine, run_genv):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_genv("enforce", "--interval", "1", "--metrics-port", str(port))
        assert result.rc == 1
        assert result.err.strip().splitlines()[-1] == (
            f"genv: cannot serve metrics on 127.0.0.1:{port}: the port is in use by another "
            "program; choose another port"
        )
        result = run_genv("monitor", "-p", str(port), "--config-dir", str(fake_machine.root / "m"))
        assert result.rc == 1 and "Traceback" not in result.err
        assert f"cannot serve metrics on 127.0.0.1:{port}" in result.err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("enforce", "--metrics-port", "70000"), "the port must be a number from 1 to 65535"),
        (("enforce", "--interval", "0", "--metrics-port", "9"), "give an --interval above 0"),
        (("monitor", "-p", "0"), "is not a port"),
        (("monitor", "-i", "0"), "at least 0.1 seconds"),
        (("top", "--enforcer", "ftp://somewhere"), "is not an http URL"),
    ],
)
def test_bad_values_are_one_line(fake_machine, run_genv, args, says):
    result = run_genv(*args)
    assert result.rc == 2, result
    assert len(result.err.strip().splitlines()) == 1 and says in result.err, result.err


@pytest.mark.parametrize("resident", [26_021_888, None])
def test_the_per_cycle_text_is_what_prometheus_client_writes(monkeypatch, resident) -> None:
    """A scrape writes the per-cycle families from plain numbers (building and rendering them
    with prometheus-client was 0.3 ms of the daemon's CPU a scrape): byte for byte what
    ``generate_latest`` writes of the same families, through cycles of every duration, large
    sums and times, with and without the resident memory."""
    from prometheus_client import generate_latest

    metrics = EnforcementMetrics()
    per_cycle = metrics._per_cycle
    monkeypatch.setattr(per_cycle, "_resident", lambda: resident)
    cpu = [0.25]
    monkeypatch.setattr("genv.metrics.enforcement.os.times",
                        lambda: type("T", (), {"user": cpu[0], "system": 0.5})())
    assert metrics._per_cycle_text.render() == generate_latest(metrics.per_cycle)
    for duration in (0.00005, 0.0001, 0.0008, 0.003, 0.2, 20.0, 1e9):
        per_cycle.observe(duration)
        per_cycle.last_cycle = 1_764_612_345.678 + duration
        cpu[0] += 1234.5678
        assert metrics._per_cycle_text.render() == generate_latest(metrics.per_cycle)
    assert b"genv_enforce_cycles_total 7.0\n" in metrics.page()


def test_a_new_plan_with_the_same_findings_renders_nothing_again(monkeypatch) -> None:
    """A machine that changes every cycle makes a new plan every cycle; while its findings
    are the same, the gauges are not set again and the settled page is not rendered again
    (each costs the daemon's thread); a plan with other findings is shown at once."""
    import genv.metrics.enforcement as enforcement

    metrics = EnforcementMetrics()
    metrics.cycle(CycleReport(1.0, 0.0003, acted=True, plan=Plan((), (), ())))
    metrics.page()
    renders = []
    real = enforcement.generate_latest
    monkeypatch.setattr(enforcement, "generate_latest",
                        lambda registry: renders.append(registry) or real(registry))
    for start in (2.0, 3.0, 4.0):
        metrics.cycle(CycleReport(start, 0.0003, acted=True, plan=Plan((), (), ())))
        metrics.page()
    assert metrics.registry not in renders
    metrics.cycle(
        CycleReport(5.0, 0.0003, acted=True, plan=Plan((Finding("env-devices", "x"),), (), ()))
    )
    assert value(metrics.page(), "genv_enforce_violations", rule="env-devices") == 1
    assert metrics.registry in renders
