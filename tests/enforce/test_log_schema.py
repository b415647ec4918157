"""``--log-format json`` follows one documented schema, docs/log-schema.json: every action and
every rule's finding, with the same field names, ``device`` always a list of indices, memory
in bytes as integers, ``host`` null on one host. (Every JSON line any enforcement test makes
is validated too: see json_lines in enforce_helpers, called by the test runner.)"""

from __future__ import annotations

import json
import signal

import jsonschema
import pytest

from enforce_helpers import SCHEMA_PATH, json_lines, log_validator


def test_the_schema_is_a_valid_json_schema():
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["required"]) >= {"time", "host", "action", "rule", "message", "pid",
                                       "uid", "user", "environment", "device", "memory",
                                       "reason", "dry_run"}


def test_every_action_and_every_rule_follows_the_schema(genv, machine, procs, env_of):
    env_of("e1", attach=[0, 1], gpu_memory="2g")
    over = procs.start(eid="e1")
    machine.add(over.pid, 0, "3g")  # e1 over its capacity on device 0
    outside = procs.start(eid="e1")
    machine.add(outside.pid, 1, "1g")
    env_of("e2", attach=[])
    elsewhere = procs.start(eid="e2")
    machine.add(elsewhere.pid, 1, "1g")  # e2 has no device
    stubborn = procs.start(ignore_sigterm=True)
    machine.add(stubborn.pid, 0, "1g")  # in no environment; killed after the grace

    result = genv.enforce("--log-format", "json", "--non-env-processes",
                          "--max-devices-per-user", "1", "--max-memory-per-user", "4g",
                          "--grace", "0.5")

    records = json_lines(result.stdout)
    assert {r["action"] for r in records} == {"finding", "terminate", "kill", "detach"}
    assert {r["rule"] for r in records if r["action"] == "finding"} == {
        "non-env-processes", "env-devices", "env-memory", "max-devices-per-user",
        "max-memory-per-user"}
    base = {"time", "host", "action", "rule", "message", "reason", "pid", "uid", "user",
            "environment", "process", "device", "memory", "dry_run"}
    for record in records:
        assert base <= set(record)
        assert isinstance(record["device"], list)
        assert record["memory"] is None or isinstance(record["memory"], int)
        assert record["host"] is None and record["dry_run"] is False
    memory = {r["rule"]: r["memory"] for r in records if r["action"] == "finding"}
    assert memory["env-memory"] == 3 * 10**9
    assert memory["max-memory-per-user"] == 6 * 10**9
    (kill,) = [r for r in records if r["action"] == "kill"]
    assert (kill["pid"], kill["grace"], kill["memory"]) == (stubborn.pid, 0.5, 10**9)
    assert procs.wait_dead(stubborn)


def test_a_kill_on_the_way_out_follows_the_schema(genv, machine, procs):
    stubborn = procs.start(ignore_sigterm=True)
    machine.add(stubborn.pid, 0, "1g")
    daemon = genv.start("--interval", "0.2", "--non-env-processes", "--grace", "60",
                        "--log-format", "json")
    daemon.wait_for(f'"pid": {stubborn.pid}')
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=5) == 0
    records = json_lines(daemon.stdout())
    assert [r["action"] for r in records] == ["finding", "terminate", "kill"]
    assert "before genv enforce stops" in records[2]["message"]
    assert procs.wait_dead(stubborn)


@pytest.mark.parametrize("change", [
    {"device": 0}, {"memory": "1000m"}, {"host": 3}, {"action": "explode"},
    {"message": "two\nlines"}, {"extra": 1}, {"pid": None, "action": "terminate"},
])
def test_the_schema_refuses_what_it_does_not_describe(change):
    good = {
        "time": "2025-01-01T12:00:00+0000", "host": None, "action": "terminate",
        "rule": "non-env-processes", "message": "Terminating process 5 from environment N/A "
        "that is running on GPU(s) 0", "reason": "why", "pid": 5, "uid": 0, "user": "root",
        "environment": None, "process": "python", "device": [0], "memory": 10**9,
        "dry_run": False,
    }
    validator = log_validator()
    assert validator.is_valid(good)
    assert not validator.is_valid({**good, **change})
