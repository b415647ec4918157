"""``genv remote monitor``, ``genv remote top`` and ``genv remote enforce --metrics-port``
against real sshd hosts, scraped by a real Prometheus and driven in a real terminal."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from helpers_remote import Lines, env_on, gpu_process, wait_exit
from promkit import free_port, get, samples_of, wait_http

GI = 1024**3


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def _by_host(found: list[tuple[dict[str, str], float]]) -> dict[str, float]:
    return {labels["hostname"]: value for labels, value in found}


def test_prometheus_sees_every_host_and_one_going_away(cluster, ssh_site, run_genv, sleeper,
                                                       prometheus, tmp_path):
    """Three hosts (2, 3 and 1 devices); Prometheus scrapes ``genv remote monitor`` and the
    cluster daemon. Every metric names its host; the daemon's termination of a stray process
    on h3 is counted; h2 killed is ``genv_host_up 0``, said once, and the others keep their
    values."""
    sim = cluster(3)
    bob = ssh_site.user
    sim["h1"].set_devices(2)
    sim["h2"].set_devices(3)
    sim["h3"].set_devices(1, "40gi")
    env_on(sim["h1"], run_genv, sleeper, bob, "b1")
    in_env = gpu_process(sim["h1"], sleeper, bob, "b1", 0, "3gi")
    env_on(sim["h2"], run_genv, sleeper, bob, "b2", devices=2)
    gpu_process(sim["h2"], sleeper, bob, "b2", 1, "2gi")

    exporter_port, daemon_port = free_port(), free_port()
    monitor = sim.popen("monitor", "-p", str(exporter_port), "-i", "0.3",
                        "--config-dir", str(tmp_path / "monitor"))
    daemon = sim.popen("enforce", "--interval", "0.3", "--non-env-processes", "--grace", "1",
                       "--metrics-port", str(daemon_port))
    try:
        said, acted = Lines(monitor.stderr), Lines(daemon.stdout)
        Lines(monitor.stdout), Lines(daemon.stderr)
        wait_http(f"http://127.0.0.1:{exporter_port}/metrics", alive=lambda: monitor.poll() is None)
        wait_http(f"http://127.0.0.1:{daemon_port}/metrics", alive=lambda: daemon.poll() is None)
        scrape = (tmp_path / "monitor" / "prometheus" / "prometheus.yml").read_text()
        assert f'"127.0.0.1:{exporter_port}"' in scrape
        prometheus.start({"genv": [f"127.0.0.1:{exporter_port}"],
                          "genv-enforce": [f"127.0.0.1:{daemon_port}"]})

        up = prometheus.wait_for("genv_host_up", lambda found: len(found) == 3)
        assert _by_host(up) == {"h1": 1, "h2": 1, "h3": 1}
        query = prometheus.query
        assert _by_host(query("count by (hostname) (genv_device_memory_total_bytes)")) == {
            "h1": 2, "h2": 3, "h3": 1}
        assert prometheus.value('genv_device_memory_total_bytes{hostname="h3"}') == 40 * GI
        assert _by_host(query("genv_environments_total")) == {"h1": 1, "h2": 1, "h3": 0}
        assert _by_host(query("genv_attached_devices_total")) == {"h1": 1, "h2": 2, "h3": 0}
        assert _by_host(query(f'genv_user_gpu_memory_used_bytes{{username="{bob.name}"}}')) == {
            "h1": 3 * GI, "h2": 2 * GI}
        assert prometheus.value(
            'genv_environment_gpu_memory_used_bytes{hostname="h1",eid="b1",device="0"}'
        ) == 3 * GI
        assert prometheus.value(
            f'genv_process_used_gpu_memory_bytes{{hostname="h1",pid="{in_env.pid}"}}'
        ) == 3 * GI
        # through sudo -n, as root there: bob's processes are known to be in his environments
        assert _by_host(query('genv_gpu_processes{membership="in-env"}')) == {
            "h1": 1, "h2": 1, "h3": 0}
        assert _by_host(query("genv_is_installed")) == {"h1": 1, "h2": 1, "h3": 1}
        prometheus.wait_for("genv_enforce_cycles_total", lambda found: found and found[0][1] > 0)
        assert prometheus.value("genv_enforce_hosts_not_answering") == 0

        stray = gpu_process(sim["h3"], sleeper, bob, None, 0)
        acted.wait_for(f"[h3] Terminating process {stray.pid}")
        wait_exit(stray)
        prometheus.wait_for(
            f'genv_enforce_terminations_total{{rule="non-env-processes",user="{bob.name}"}}',
            lambda found: found and found[0][1] == 1,
        )

        killed = time.time()
        sim["h2"].kill()
        prometheus.wait_for('genv_host_up{hostname="h2"}', lambda found: found
                            and found[0][1] == 0)
        prometheus.wait_for("genv_enforce_hosts_not_answering", lambda found: found
                            and found[0][1] == 1)
        # Collections go on for a few seconds of reconnecting (1 s, then 2 s) ...
        prometheus.wait_for(
            f"genv_exporter_last_collection_timestamp_seconds > {killed + 3.5}",
            lambda found: bool(found), timeout=30,
        )
        # ... and the others keep their values; h2's usage is gone, not left as it was.
        assert _by_host(query("genv_host_up")) == {"h1": 1, "h2": 0, "h3": 1}
        assert _by_host(query("genv_environments_total")) == {"h1": 1, "h3": 0}
        assert _by_host(query("count by (hostname) (genv_device_memory_total_bytes)")) == {
            "h1": 2, "h3": 1}
        assert prometheus.value('genv_is_installed{hostname="h2"}') == 1  # unknown, not absent
        assert said.count("WARNING: h2: ") == 1, said.lines
        assert all(not line.startswith("genv remote monitor: WARNING: h1") for line in said.lines)
    finally:
        _stop(monitor)
        _stop(daemon)
    assert monitor.returncode == 0 and daemon.returncode == 0


def test_remote_top_shows_each_host(cluster, ssh_site, run_genv, sleeper, terminal):
    """``genv remote top`` as bob (no sudo): a section per host, live; a host that dies is
    shown as not answering; into a pipe, one plain frame; ``-e`` stops at a host that fails."""
    sim = cluster(2)
    bob = ssh_site.user
    env_on(sim["h1"], run_genv, sleeper, bob, "t1")
    mine = gpu_process(sim["h1"], sleeper, bob, "t1", 0, "3gi")
    env_on(sim["h2"], run_genv, sleeper, bob, "t2", devices=2)

    screen_of = terminal()
    screen_of.start(sim.argv("-l", bob.name, "top", "--interval", "0.3"))
    screen = screen_of.wait_for(lambda text: "2 host(s)" in text and "t2" in text
                                and "t1" in text)
    assert screen.splitlines()[0].startswith("genv top")
    first, second = screen.split("\nh2")[0].split("\nh1")[1], screen.split("\nh2")[1]
    env_row = next(line for line in first.splitlines() if line.strip().startswith("t1"))
    assert "3.0Gi" in env_row and str(mine.pid) in env_row
    assert "t2" not in first and "t1" not in second
    h2_row = next(line for line in second.splitlines() if line.strip().startswith("t2"))
    assert "0,1" in h2_row

    sim["h2"].kill()
    screen = screen_of.wait_for(lambda text: "(1 not answering)" in text)
    assert "not answering: " in screen.split("\nh2")[1]
    assert "t1" in screen.split("\nh2")[0]
    screen_of.keys("q")
    deadline = time.monotonic() + 10
    while screen_of.running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not screen_of.running()

    plain = sim.run("-l", bob.name, "top")
    assert plain.rc == 0, plain
    assert "\x1b[" not in plain.out
    assert "2 host(s) (1 not answering)" in plain.lines[0]
    assert "t1" in plain.out.split("\nh2")[0] and "not answering" in plain.out.split("\nh2")[1]
    stop = sim.run("-e", "-l", bob.name, "top")
    assert stop.rc == 1 and stop.err_lines[-1].startswith("genv: h2: "), stop


def test_metrics_port_needs_a_running_daemon():
    result = subprocess.run(
        [sys.executable, "-m", "genv", "remote", "-H", "h1", "enforce", "--interval", "0",
         "--metrics-port", "9101"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "genv: --metrics-port serves a running daemon: give an --interval above 0")


def _page(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    return samples_of(get(f"http://127.0.0.1:{port}/metrics"))


def _wait_page(port: int, check, timeout: float = 30.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while True:
        page = _page(port)
        if check(page):
            return page
        if time.monotonic() > deadline:
            raise AssertionError(f"the exporter never served what was expected: {page}")
        time.sleep(0.05)


def _host_up(page, host: str) -> float | None:  # noqa: ANN001
    return next((v for labels, v in page.get("genv_host_up", []) if labels["hostname"] == host),
                None)


def test_a_hanging_host_holds_up_no_other(cluster, ssh_site, sleeper, tmp_path):
    """h2 stops answering on its open channel: while its answer is awaited (up to -t), h1's
    new process is on the page already; then h2 is ``genv_host_up 0``, said once."""
    sim = cluster(2)
    port = free_port()
    monitor = sim.popen("-t", "3", "monitor", "-p", str(port), "-i", "0.2",
                        "--config-dir", str(tmp_path / "monitor"))
    try:
        said = Lines(monitor.stderr)
        Lines(monitor.stdout)
        wait_http(f"http://127.0.0.1:{port}/metrics", alive=lambda: monitor.poll() is None)
        _wait_page(port, lambda page: _host_up(page, "h1") == 1 and _host_up(page, "h2") == 1)
        sim["h2"].pause()
        started = time.monotonic()
        late = gpu_process(sim["h1"], sleeper, ssh_site.user, None, 2)
        page = _wait_page(port, lambda page: any(
            labels.get("pid") == str(late.pid) for labels, _ in
            page.get("genv_process_devices_total", [])))
        if time.monotonic() - started < 2.5:  # h2's answer was still awaited
            assert _host_up(page, "h2") == 1
        _wait_page(port, lambda page: _host_up(page, "h2") == 0)
        assert time.monotonic() - started < 15
        said.wait_for("WARNING: h2: did not answer within 3 s")
        assert _host_up(_page(port), "h1") == 1
        assert said.count("WARNING: h2: ") == 1, said.lines
    finally:
        _stop(monitor)
    assert monitor.returncode == 0
