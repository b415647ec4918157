"""The claim a process makes, read from /proc/PID/environ: exact name, any position."""

from __future__ import annotations

import subprocess
import time

import pytest

from genv.system import processes
from genv.system.process_facts import ProcessInspector

from support import wait_environ


@pytest.mark.parametrize(
    ("environment", "claimed"),
    [
        ({"GENV_ENVIRONMENT_ID": "e1"}, "e1"),
        ({"A": "1", "GENV_ENVIRONMENT_ID": "e-2", "Z": "9"}, "e-2"),
        ({"XGENV_ENVIRONMENT_ID": "trap", "GENV_ENVIRONMENT_IDX": "trap"}, None),
        ({"GENV_ENVIRONMENT_ID": ""}, None),
        ({"GENV_ENVIRONMENT_ID": "e 2"}, None),  # no environment has such an id
        ({"GENV_ENVIRONMENT_ID": "e1\nforged line"}, None),
        ({"OTHER": "1"}, None),
    ],
)
def test_claim_is_read_exactly(environment, claimed):
    process = subprocess.Popen(["sleep", "30"], env=environment)
    wait_environ(process.pid)
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


def test_an_empty_environment_of_a_process_just_started_is_not_told(monkeypatch):
    """Right after exec the kernel shows an empty environment for a moment: that is "could
    not tell", never "claims nothing" (which could get it terminated)."""
    process = subprocess.Popen(["sleep", "30"], env={})
    try:
        facts = ProcessInspector().facts(process.pid)
        assert facts is not None and not facts.environ_readable
        # an older process that cleared its environment claims nothing: no shield in that
        monkeypatch.setattr(processes, "YOUNG_SECONDS", 0.0)
        facts = ProcessInspector().facts(process.pid)
        assert facts is not None and facts.environ_readable and facts.claimed_eid is None
    finally:
        process.kill()
        process.wait()
