"""``genv remote devices|envs|query|activate`` against real sshd hosts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pexpect
import pytest

from helpers_remote import env_on


def test_tables_have_a_host_column(cluster, ssh_site, run_genv, sleeper):
    sim = cluster(2)
    alice = ssh_site.admin
    env_on(sim["h2"], run_genv, sleeper, alice, "a1", devices=2)
    result = run_genv("envs", "config", "--eid", "a1", "name", "--name", "train",
                      user=alice, env=sim["h2"].env())
    assert result.rc == 0, result
    devices = sim.run("devices")
    assert devices.rc == 0, devices
    assert devices.lines == [
        "HOST                     TOTAL    AVAILABLE",
        "h1                       4        4",
        "h2                       4        2",
        "",
        "Total 8 devices with 6 available on 2 hosts",
    ]
    envs = sim.run("envs", "--format", "csv", "--no-summary")
    assert envs.lines[0] == "HOST,ID,USER,NAME,CREATED"
    assert envs.lines[1].startswith(f"h2,a1,{alice.name},train,"), envs
    found = sim.run("query", "--name", "train", "--query", "hostname", "eid", "username")
    assert found.lines == [f"h2,a1,{alice.name}"], found
    as_json = json.loads(sim.run("devices", "--format", "json").out)
    assert [(h["host"], h["total"], h["available"]) for h in as_json] == [
        ("h1", 4, 4), ("h2", 4, 2)]


def test_genv_missing_on_a_host(cluster):
    sim = cluster(2, no_genv={"h2"})
    result = sim.run("devices", "--no-summary")
    assert result.rc == 0 and len(result.lines) == 2, result
    assert any(line.startswith("genv: h2: genv is not installed there")
               for line in result.err_lines), result


def _genv_143(user) -> str | None:
    """A folder with genv 1.4.3's ``genv`` that ``user`` can run (the benchmark's, or one
    installed by hand); None when there is none."""
    here = Path(__file__).resolve().parents[2]
    for venv in (here / "bench" / "out" / "peer", Path("/opt/genv-1.4.3"),
                 Path("/opt/genv-peer")):
        genv = venv / "bin" / "genv"
        if genv.exists():
            try:
                probe = subprocess.run([str(genv), "version"], preexec_fn=user.become(),
                                       capture_output=True, check=False, cwd="/", timeout=60)
            except OSError:  # a folder the user may not enter
                continue
            if probe.returncode == 0:
                return str(venv / "bin")
    return None


def test_genv_too_old_on_a_host(cluster, ssh_site):
    old = _genv_143(ssh_site.admin)
    if old is None:
        pytest.skip("no genv 1.4.3 that test users can run (see ssh.explain's unit tests)")
    sim = cluster(2, other_genv={"h2": old})
    result = sim.run("devices", "--no-summary")
    assert result.rc == 0 and len(result.lines) == 2, result
    assert any(line.startswith("genv: h2: the genv there is too old or not this genv")
               for line in result.err_lines), result


def test_activate_lands_on_the_tightest_fit(cluster, ssh_site, run_genv, sleeper):
    """Two devices are asked: h1 has 4 free, h2 2, h3 1; h2 fits with none left over, so
    larger requests still find h1. The session there has the environment activated."""
    sim = cluster(3)
    alice, bob = ssh_site.admin, ssh_site.user
    env_on(sim["h2"], run_genv, sleeper, alice, "a2", devices=2)
    env_on(sim["h3"], run_genv, sleeper, alice, "a3", devices=3)
    none_fit = sim.run("-l", bob.name, "activate", "--gpus", "5")
    assert none_fit.rc == 1
    assert none_fit.err_lines == [
        "genv: no host has 5 free devices (free now: h1: 4, h2: 2, h3: 1); ask for fewer, or "
        "try again later"]
    argv = sim.argv("-l", bob.name, "activate", "--gpus", "2", "--name", "job")
    child = pexpect.spawn(
        argv[0], argv[1:],
        env={**sim.environment(), "TERM": "dumb"}, encoding="utf-8", timeout=30,
    )
    try:
        child.expect("genvtest\\$ ")
        child.sendline('echo "AT=$GENV_TMPDIR DEVICES=$CUDA_VISIBLE_DEVICES"')
        child.expect(r"AT=(/\S+) DEVICES=([0-9,-]+)\r\n")
        assert child.match.group(1) == str(sim["h2"].state_dir)
        assert child.match.group(2) == "2,3"
        child.sendline("genv status")
        child.expect("job")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert os.path.isdir(sim["h2"].state_dir)
