"""``genv remote enforce`` against real sshd hosts: cross-host limits, hosts that fail."""

from __future__ import annotations

import json
import signal
import time

from helpers_remote import Lines, env_on, gpu_process, wait_exit


def test_device_limit_counts_three_hosts(cluster, ssh_site, run_genv, sleeper):
    """bob holds one device on each of three hosts (h3 reached through h1 with ProxyJump);
    with at most one device per user, the idle one goes first, then the one he attached
    most recently, with its process; his device on h1 stays."""
    sim = cluster(3, jump={"h3": "h1"})
    bob = ssh_site.user
    env_on(sim["h1"], run_genv, sleeper, bob, "b1")
    first = gpu_process(sim["h1"], sleeper, bob, "b1", 0)
    env_on(sim["h2"], run_genv, sleeper, bob, "b2")
    second = gpu_process(sim["h2"], sleeper, bob, "b2", 0)
    env_on(sim["h3"], run_genv, sleeper, bob, "b3")

    dry = sim.run("enforce", "--interval", "0", "--max-devices-per-user", "1", "--dry-run",
                  "--log-format", "json")
    assert dry.rc == 0, dry
    records = [json.loads(line) for line in dry.lines]
    finding = records[0]
    assert finding["action"] == "finding" and finding["host"] is None
    assert finding["hosts"] == ["h1", "h2", "h3"] and finding["over"] == 2
    assert {(r["action"], r["host"]) for r in records[1:]} == {
        ("terminate", "h2"), ("detach", "h2"), ("detach", "h3")}
    assert all(r["dry_run"] for r in records)

    result = sim.run("enforce", "--interval", "0", "--max-devices-per-user", "1",
                     "--grace", "2")
    assert result.rc == 0, result
    assert result.lines[0] == (
        f"User {bob.name} is using 3 devices which is 2 more than the maximum allowed")
    assert f"[h2] Terminating process {second.pid} from environment b2 that is running on " \
        "GPU(s) 0" in result.lines
    assert f"[h2] Detaching environment b2 of user {bob.name} from device 0" in result.lines
    assert f"[h3] Detaching environment b3 of user {bob.name} from device 0" in result.lines
    assert not any(line.startswith("[h1]") for line in result.lines), result.lines
    wait_exit(second)
    assert first.poll() is None
    listing = sim.run("devices", "--format", "csv", "--no-header", "--no-summary")
    assert listing.lines == ["h1,4,3", "h2,4,4", "h3,4,4"], listing


def test_memory_limit_counts_all_hosts(cluster, ssh_site, run_genv, sleeper):
    """3gi on h1 and 3gi on h2 are 6gi for bob: over 4g, his newest process goes, wherever
    it runs."""
    sim = cluster(2)
    bob = ssh_site.user
    env_on(sim["h1"], run_genv, sleeper, bob, "m1")
    older = gpu_process(sim["h1"], sleeper, bob, "m1", 0, "3gi")
    time.sleep(0.02)  # a later start (ticks of 10 ms) for the newer one
    env_on(sim["h2"], run_genv, sleeper, bob, "m2")
    newer = gpu_process(sim["h2"], sleeper, bob, "m2", 0, "3gi")
    result = sim.run("enforce", "--interval", "0", "--max-memory-per-user", "4g",
                     "--grace", "2")
    assert result.rc == 0, result
    assert result.lines[0].startswith(f"User {bob.name} is using 6442m of GPU memory"), result
    assert f"[h2] Terminating process {newer.pid} from environment m2 that is running on " \
        "GPU(s) 0" in result.lines
    assert not any(str(older.pid) in line for line in result.lines)
    wait_exit(newer)
    assert older.poll() is None


def test_host_killed_mid_run(cluster, sleeper):
    """The daemon goes on with the others when a host dies, says so once, and once more when
    it is back."""
    sim = cluster(3)
    daemon = sim.popen("enforce", "--interval", "0.3", "--non-env-processes", "--grace", "2",
                       "--log-level", "debug")
    try:
        out, err = Lines(daemon.stdout), Lines(daemon.stderr)
        err.wait_for("3 of 3 hosts answered")
        sim["h2"].kill()
        err.wait_for("h2: ")
        err.wait_for("2 of 3 hosts answered")
        stray = gpu_process(sim["h1"], sleeper, None, None, 1)
        out.wait_for(f"[h1] Terminating process {stray.pid}")
        wait_exit(stray)
        sim["h2"].start()
        err.wait_for("resolved: h2: ", timeout=60)
        err.wait_for("3 of 3 hosts answered", count=2)
        assert err.count("WARNING: h2: ") == 1, err.lines
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    assert daemon.returncode == 0


def test_host_hanging_mid_run_costs_one_timeout(cluster, sleeper):
    """A host that stops answering on an open channel holds up one cycle by -t at most; then
    it is left out, and the others are enforced while it is reconnected in the background."""
    sim = cluster(3)
    daemon = sim.popen("-t", "1", "enforce", "--interval", "0.3", "--non-env-processes",
                       "--grace", "2", "--log-level", "debug")
    try:
        out, err = Lines(daemon.stdout), Lines(daemon.stderr)
        err.wait_for("3 of 3 hosts answered")
        sim["h3"].pause()
        err.wait_for("h3: did not answer within 1 s")
        err.wait_for("2 of 3 hosts answered")
        stray = gpu_process(sim["h2"], sleeper, None, None, 0)
        out.wait_for(f"[h2] Terminating process {stray.pid}")
        wait_exit(stray)
        assert err.count("WARNING: h3: ") == 1, err.lines
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    assert daemon.returncode == 0


def test_changed_host_key_is_refused(cluster, sleeper):
    sim = cluster(2)
    sim["h2"].new_host_key()
    stray = gpu_process(sim["h2"], sleeper, None, None, 0)
    result = sim.run("enforce", "--interval", "0", "--non-env-processes")
    assert result.rc == 0, result
    assert result.lines == []
    assert any(line.startswith("genv remote enforce: WARNING: h2: its host key has CHANGED")
               for line in result.err_lines), result
    assert stray.poll() is None
    listing = sim.run("devices", "--no-summary")
    assert listing.lines[1].startswith("h1 "), listing
    assert len(listing.lines) == 2
    assert any(line.startswith("genv: h2: its host key has CHANGED") and "ssh-keygen -R h2"
               in line for line in listing.err_lines), listing


def test_hanging_host_is_bounded_by_timeout(cluster, sleeper):
    """A host that accepts the connection and never answers costs -t, not forever; the
    others are enforced."""
    sim = cluster(2)
    sim["h2"].pause()
    stray = gpu_process(sim["h1"], sleeper, None, None, 0)
    started = time.monotonic()
    result = sim.run("-t", "2", "enforce", "--interval", "0", "--non-env-processes",
                     "--grace", "2")
    elapsed = time.monotonic() - started
    assert f"[h1] Terminating process {stray.pid} from environment N/A that is running on " \
        "GPU(s) 0" in result.lines, result
    assert any("h2: did not answer within 2 s" in line for line in result.err_lines), result
    assert elapsed < 15, elapsed
    wait_exit(stray)


def test_sudo_asking_for_a_password(cluster, ssh_site):
    sim = cluster(1)
    result = sim.run("-l", ssh_site.user.name, "enforce", "--interval", "0")
    assert result.rc == 1
    assert any("h1: sudo asks for a password there" in line for line in result.err_lines), \
        result


def test_quiet_and_exit_on_error(cluster):
    sim = cluster(2)
    sim["h2"].kill()
    quiet = sim.run("-q", "devices", "--no-summary")
    assert quiet.rc == 0 and quiet.err_lines == [] and len(quiet.lines) == 2, quiet
    loud = sim.run("devices", "--no-summary")
    assert any(line.startswith("genv: h2: cannot connect") for line in loud.err_lines), loud
    stop = sim.run("-e", "devices")
    assert stop.rc == 1 and stop.lines == [], stop
    assert stop.err_lines[-1].startswith("genv: h2: cannot connect"), stop
