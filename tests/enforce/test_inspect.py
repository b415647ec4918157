"""The claim a process makes, read from /proc/PID/environ: exact name, any position."""

from __future__ import annotations

import subprocess
import time

import pytest

from genv.system.inspect import ProcessInspector


@pytest.mark.parametrize(
    ("environment", "claimed"),
    [
        ({"GENV_ENVIRONMENT_ID": "e1"}, "e1"),
        ({"A": "1", "GENV_ENVIRONMENT_ID": "e 2", "Z": "9"}, "e 2"),
        ({"XGENV_ENVIRONMENT_ID": "trap", "GENV_ENVIRONMENT_IDX": "trap"}, None),
        ({"GENV_ENVIRONMENT_ID": ""}, None),
        ({}, None),
    ],
)
def test_claim_is_read_exactly(environment, claimed):
    process = subprocess.Popen(["sleep", "30"], env=environment)
    try:
        facts = ProcessInspector().facts(process.pid)
        assert facts is not None
        assert facts.environ_readable
        assert facts.claimed_eid == claimed
        assert facts.name == "sleep"
    finally:
        process.kill()
        process.wait()


def test_a_process_that_is_gone_has_no_facts():
    process = subprocess.Popen(["sleep", "30"])
    process.kill()
    process.wait()
    assert ProcessInspector().facts(process.pid) is None


def test_a_zombie_has_no_facts():
    process = subprocess.Popen(["sleep", "30"])
    process.kill()
    try:
        time.sleep(0.2)  # dead, not yet reaped: a zombie
        assert ProcessInspector().facts(process.pid) is None
    finally:
        process.wait()
