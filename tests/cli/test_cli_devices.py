"""``genv devices``: attach, detach, find, ps and query on a simulated machine."""

from __future__ import annotations

import json
import re

import pytest

DEVICES_HEADER = "ID      ENV ID      ENV NAME        ATTACHED"
AGO = r"\d+ (second|minute|hour|day|week)s? ago"
TIMESTAMP = r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d"


def only_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def attach(run_genv, eid: str, *options: str) -> str:
    result = run_genv("devices", "attach", "--eid", eid, *options)
    assert result.rc == 0, result
    assert result.err == "", result
    return result.out.strip()


def holders(run_genv) -> dict[int, list[str]]:
    """Device index -> environments attached to it, from ``devices query``."""
    result = run_genv("devices", "query", "--query", "index", "eids")
    assert result.rc == 0, result
    table = {}
    for line in result.lines:
        index, eids = line.split(",")
        table[int(index)] = eids.split()
    return table


@pytest.fixture
def two_envs(fake_machine, new_env):
    return new_env("e1", name="train"), new_env("e2")


# -- attach ----------------------------------------------------------------------------


def test_attach_by_count_prints_the_attached_indices(two_envs, run_genv) -> None:
    assert attach(run_genv, "e1", "--count", "2") == "0,1"
    assert attach(run_genv, "e2", "--count", "1") == "2"
    assert attach(run_genv, "e1", "--count", "2") == "0,1"  # nothing changes
    assert holders(run_genv) == {0: ["e1"], 1: ["e1"], 2: ["e2"], 3: []}


def test_attach_more_keeps_what_is_held(two_envs, run_genv) -> None:
    assert attach(run_genv, "e1", "--index", "2") == "2"
    assert attach(run_genv, "e1", "--count", "3") == "0,1,2"


def test_attach_by_index(two_envs, run_genv) -> None:
    assert attach(run_genv, "e1", "--index", "3") == "3"
    assert attach(run_genv, "e1", "--index", "1") == "1,3"
    assert attach(run_genv, "e1", "--index", "1") == "1,3"


def test_attach_uses_the_configured_count(fake_machine, new_env, run_genv) -> None:
    new_env("e1", gpus=3)
    assert attach(run_genv, "e1") == "0,1,2"


def test_device_not_available(two_envs, run_genv, fake_machine) -> None:
    attach(run_genv, "e1", "--index", "0")
    before = fake_machine.state_file(0).read_bytes()
    result = run_genv("devices", "attach", "--eid", "e2", "--index", "0")
    assert result.rc == 1
    assert result.out == ""
    assert only_line(result.err).endswith("Device 0 is not available")
    assert fake_machine.state_file(0).read_bytes() == before


def test_device_that_does_not_exist(two_envs, run_genv) -> None:
    result = run_genv("devices", "attach", "--eid", "e1", "--index", "7")
    assert result.rc == 1
    assert "Device 7" in only_line(result.err)


def test_not_enough_devices_without_over_subscription(two_envs, run_genv) -> None:
    attach(run_genv, "e1", "--count", "3")
    result = run_genv("devices", "attach", "--eid", "e2", "--count", "2")
    assert result.rc == 1
    assert "available" in only_line(result.err)
    assert holders(run_genv)[3] == []


def test_more_devices_than_the_machine_has(two_envs, run_genv) -> None:
    for options in (["--count", "5"], ["--count", "5", "--allow-over-subscription"]):
        result = run_genv("devices", "attach", "--eid", "e1", *options)
        assert result.rc == 1
        only_line(result.err)
    assert holders(run_genv) == {0: [], 1: [], 2: [], 3: []}


def test_over_subscription_by_index(two_envs, run_genv) -> None:
    attach(run_genv, "e1", "--index", "0")
    assert attach(run_genv, "e2", "--index", "0", "--allow-over-subscription") == "0"
    assert holders(run_genv)[0] == ["e1", "e2"]


def test_over_subscription_takes_the_least_loaded_devices(fake_machine, new_env,
                                                          run_genv) -> None:
    fake_machine.set_devices(3)
    for eid in ("a", "b", "c", "d"):
        new_env(eid)
    attach(run_genv, "a", "--count", "3")  # every device once
    attach(run_genv, "b", "--index", "0", "--allow-over-subscription")
    attach(run_genv, "c", "--index", "2", "--allow-over-subscription")
    # loads now: device 0 two, device 1 one, device 2 two
    assert attach(run_genv, "d", "--count", "1", "--allow-over-subscription") == "1"
    assert attach(run_genv, "d", "--count", "2", "--allow-over-subscription") == "0,1"


def test_free_devices_come_before_shared_ones(two_envs, run_genv) -> None:
    attach(run_genv, "e1", "--count", "2")
    assert attach(run_genv, "e2", "--count", "3", "--allow-over-subscription") == "0,2,3"
    items = json.loads(run_genv("devices", "ps", "--format", "json").out)
    shared = {(item["index"], a["eid"]): a["over_subscribed"]
              for item in items for a in item["attachments"]}
    assert shared == {(0, "e1"): False, (1, "e1"): False, (0, "e2"): True,
                      (2, "e2"): False, (3, "e2"): False}


def test_memory_capacities_share_a_device(fake_machine, new_env, run_genv) -> None:
    fake_machine.set_devices(2)
    new_env("a", gpu_memory="40gi")
    new_env("b", gpu_memory="40gi")
    new_env("c", gpu_memory="1gi")
    new_env("d")
    assert attach(run_genv, "a", "--count", "1") == "0"
    assert attach(run_genv, "b", "--count", "1") == "0"  # fits beside a, no -o needed
    assert attach(run_genv, "c", "--count", "1") == "1"  # device 0 is full
    refused = run_genv("devices", "attach", "--eid", "c", "--index", "0")
    assert refused.rc == 1
    assert only_line(refused.err).endswith("Device 0 is not available")
    # an environment without a capacity wants a device of its own: none is left
    assert run_genv("devices", "attach", "--eid", "d", "--count", "1").rc == 1
    assert holders(run_genv) == {0: ["a", "b"], 1: ["c"]}
    query = run_genv("devices", "query", "--query", "index", "attachments").lines
    assert re.fullmatch(r"0,a\+40gi\+\S+ b\+40gi\+\S+", query[0]), query


def test_attach_an_unknown_environment(fake_machine, run_genv) -> None:
    result = run_genv("devices", "attach", "--eid", "ghost", "--count", "1")
    assert result.rc == 1
    assert "ghost" in only_line(result.err)


def test_count_and_index_are_exclusive(two_envs, run_genv) -> None:
    result = run_genv("devices", "attach", "--eid", "e1", "--count", "1", "--index", "0")
    assert result.rc == 2
    assert "Traceback" not in result.err


# -- detach and find -------------------------------------------------------------------


def test_detach_one_index_prints_what_remains(two_envs, run_genv) -> None:
    attach(run_genv, "e1", "--count", "3")
    result = run_genv("devices", "detach", "--eid", "e1", "--index", "1")
    assert (result.rc, result.out, result.err) == (0, "0,2\n", "")
    assert run_genv("devices", "find", "--eid", "e1").out == "0,2\n"


def test_detach_everything(two_envs, run_genv) -> None:
    attach(run_genv, "e1", "--count", "2")
    attach(run_genv, "e2", "--count", "1")
    result = run_genv("devices", "detach", "--eid", "e1")
    assert (result.rc, result.out.strip()) == (0, "")
    assert run_genv("devices", "find", "--eid", "e1").out.strip() == ""
    assert holders(run_genv) == {0: [], 1: [], 2: ["e2"], 3: []}


def test_detach_quiet(two_envs, run_genv) -> None:
    attach(run_genv, "e1", "--count", "2")
    result = run_genv("devices", "detach", "--eid", "e1", "--index", "0", "--quiet")
    assert (result.rc, result.out, result.err) == (0, "", "")
    assert run_genv("devices", "find", "--eid", "e1").out == "1\n"


def test_detach_a_device_not_attached_is_harmless(two_envs, run_genv) -> None:
    attach(run_genv, "e1", "--index", "2")
    result = run_genv("devices", "detach", "--eid", "e1", "--index", "3")
    assert (result.rc, result.out) == (0, "2\n")


def test_detach_an_ended_environment_is_harmless(fake_machine, new_env, run_genv) -> None:
    # as in genv 1.4.3: integrations detach while cleaning up, after the environment ended
    ended = new_env("e1")
    attach(run_genv, "e1", "--count", "1")
    ended.kill()
    ended.wait()
    for eid in ("e1", "ghost"):
        result = run_genv("devices", "detach", "--eid", eid)
        assert (result.rc, result.out, result.err) == (0, "\n", "")
        quiet = run_genv("devices", "detach", "--eid", eid, "--index", "0", "--quiet")
        assert (quiet.rc, quiet.out, quiet.err) == (0, "", "")


def test_find(two_envs, run_genv) -> None:
    attach(run_genv, "e1", "--index", "3")
    attach(run_genv, "e1", "--index", "0")
    assert run_genv("devices", "find", "--eid", "e1").out == "0,3\n"
    assert run_genv("devices", "find", "--eid", "e2").out == "\n"
    assert run_genv("devices", "find", "--eid", "ghost").rc == 0


# -- ps --------------------------------------------------------------------------------


def test_ps_table(two_envs, run_genv) -> None:
    attach(run_genv, "e1", "--count", "2")
    attach(run_genv, "e2", "--index", "0", "--allow-over-subscription")
    result = run_genv("devices", "ps")
    assert result.rc == 0
    assert result.err == ""
    header, *rows = result.lines
    assert header == DEVICES_HEADER
    assert len(rows) == 5
    assert [(row[:8], row[8:20], row[20:36]) for row in rows[:3]] == [
        ("0       ", "e1          ", "train           "),
        ("0       ", "e2          ", "                "),
        ("1       ", "e1          ", "train           "),
    ]
    for row in rows[:3]:
        assert re.fullmatch(AGO, row[36:]), row
    # a free device: its index alone
    assert [row.strip() for row in rows[3:]] == ["2", "3"]


def test_plain_devices_is_ps(two_envs, run_genv) -> None:
    result = run_genv("devices")
    assert result.rc == 0
    assert result.lines == [DEVICES_HEADER, "0", "1", "2", "3"]


def test_ps_no_header_and_timestamp(two_envs, run_genv) -> None:
    attach(run_genv, "e1", "--index", "1")
    lines = run_genv("devices", "ps", "--no-header", "--timestamp").lines
    assert [line.strip() for line in lines if len(line.strip()) == 1] == ["0", "2", "3"]
    [row] = [line for line in lines if "e1" in line]
    assert row.startswith("1       e1          train           ")
    assert re.fullmatch(TIMESTAMP, row[36:])
    stored = run_genv("devices", "query", "--query", "attachments").lines[1]
    assert stored == "e1++" + row[36:].replace(" ", "_")


def test_ps_csv(two_envs, run_genv) -> None:
    attach(run_genv, "e1", "--index", "1")
    lines = run_genv("devices", "ps", "--format", "csv").lines
    assert lines[0] == "ID,ENV ID,ENV NAME,ATTACHED"
    assert lines[1] == "0,,,"
    index, eid, name, attached = lines[2].split(",")
    assert (index, eid, name) == ("1", "e1", "train")
    assert re.fullmatch(AGO, attached)
    assert lines[3:] == ["2,,,", "3,,,"]
    assert run_genv("devices", "ps", "--format", "csv", "--no-header").lines[0] == "0,,,"


def test_ps_json(two_envs, run_genv) -> None:
    attach(run_genv, "e1", "--index", "1")
    items = json.loads(run_genv("devices", "ps", "--format", "json").out)
    assert [item["index"] for item in items] == [0, 1, 2, 3]
    assert items[0]["attachments"] == []
    assert items[1]["total_memory"] == 80 * 1024**3
    [attachment] = items[1]["attachments"]
    assert attachment["eid"] == "e1"
    assert attachment["env_name"] == "train"
    assert attachment["uid"] == 0


# -- query -----------------------------------------------------------------------------


def test_query_every_field(two_envs, run_genv, fake_machine) -> None:
    fake_machine.set_devices(["80gi", "16gi", "40000mi"])
    run_genv("envs", "config", "--eid", "e2", "gpu-memory", "--gpu-memory", "2g")
    attach(run_genv, "e1", "--index", "0")
    attach(run_genv, "e2", "--index", "0", "--allow-over-subscription")
    result = run_genv("devices", "query", "--query", "index", "eids", "total_memory",
                      "attachments")
    assert result.rc == 0
    first, second, third = result.lines
    stamp = r"\d\d/\d\d/\d{4}_\d\d:\d\d:\d\d"
    assert re.fullmatch(rf"0,e1 e2,81920mi,e1\+\+{stamp} e2\+2g\+{stamp}", first), first
    assert second == "1,,16384mi,"
    assert third == "2,,40000mi,"


@pytest.mark.parametrize("field", ["index", "eids", "total_memory", "attachments"])
def test_query_each_field_alone(two_envs, run_genv, field: str) -> None:
    result = run_genv("devices", "query", "--query", field)
    assert result.rc == 0
    assert len(result.lines) == 4


def test_query_rejects_unknown_fields(fake_machine, run_genv) -> None:
    result = run_genv("devices", "query", "--query", "temperature")
    assert result.rc == 2
    assert "Traceback" not in result.err



@pytest.mark.parametrize("command", [("devices",), ("envs",)])
def test_listing_flags_work_without_naming_ps(fake_machine, new_env, run_genv, command) -> None:
    """`genv devices --format csv` lists like `genv devices ps --format csv`."""
    new_env("e1")
    # (--timestamp: "N seconds ago" could change between the two runs)
    short = run_genv(*command, "--format", "csv", "--no-header", "--timestamp")
    full = run_genv(*command, "ps", "--format", "csv", "--no-header", "--timestamp")
    assert short.rc == full.rc == 0, (short, full)
    assert short.out == full.out
    assert short.out.strip()
    assert not short.out.startswith("ID")
