"""``genv envs``: the low-level environment commands, as the integrations call them."""

from __future__ import annotations

import json
import re
import sys

import pytest

ENVS_HEADER = "ID      USER            NAME            CREATED              PID(S)"
AGO = r"\d+ (second|minute|hour|day|week)s? ago"
TIMESTAMP = r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d"


@pytest.fixture
def env(fake_machine, new_env):
    """Environment e1 of root, named "train", alive while the returned sleeper runs."""
    return new_env("e1", name="train")


def only_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# -- activate --------------------------------------------------------------------------


def test_activate_registers_a_process(fake_machine, run_genv, sleeper) -> None:
    process = sleeper()
    result = run_genv("envs", "activate", "--eid", "e1", "--uid", "0", "--pid", process.pid)
    assert (result.rc, result.out, result.err) == (0, "", "")
    result = run_genv("envs", "query", "--query", "eid", "uid", "username", "pids")
    assert result.lines == [f"e1,0,,{process.pid}"]  # --uid alone names nobody, as in 1.4.3
    listed = run_genv("envs", "ps", "--format", "csv", "--no-header", "--timestamp").lines
    assert listed[0].split(",")[1] == "0"  # and the user column is the uid, byte for byte


def test_activate_adds_processes_to_an_existing_environment(env, run_genv, sleeper) -> None:
    second = sleeper()
    assert run_genv("envs", "activate", "--eid", "e1", "--uid", "0",
                    "--pid", second.pid).rc == 0
    result = run_genv("envs", "query", "--query", "pids", "config.name")
    assert result.lines == [f"{env.pid} {second.pid},train"]


def test_activate_with_username(fake_machine, run_genv, sleeper) -> None:
    process = sleeper()
    assert run_genv("envs", "activate", "--eid", "e1", "--uid", "0", "--username", "someone",
                    "--pid", process.pid).rc == 0
    assert run_genv("envs", "query", "--query", "username").lines == ["someone"]
    assert "someone(0)" in run_genv("envs").out


def test_activate_a_kernel(fake_machine, run_genv, sleeper, shared_tmp) -> None:
    sleeper(argv=[sys.executable, "-c", "import time; time.sleep(3600)",
                  str(shared_tmp / "kernel-5e1f-aa.json")])
    result = run_genv("envs", "activate", "--eid", "k", "--uid", "0", "--kernel-id", "5e1f-aa")
    assert result.rc == 0, result
    assert run_genv("envs", "query", "--query", "eid", "kernel_ids").lines == ["k,5e1f-aa"]
    assert run_genv("envs", "find", "--kernel-id", "5e1f-aa").lines == ["k"]
    assert run_genv("envs", "deactivate", "--kernel-id", "5e1f-aa").rc == 0
    assert run_genv("envs", "query", "--query", "eid").out == ""


def test_activate_a_process_that_does_not_exist(fake_machine, run_genv, sleeper) -> None:
    process = sleeper()
    process.kill()
    process.wait()
    result = run_genv("envs", "activate", "--eid", "e1", "--uid", "0", "--pid", process.pid)
    assert result.rc == 1
    assert str(process.pid) in only_line(result.err)
    assert "Traceback" not in result.err


def test_activate_needs_a_process_or_kernel(fake_machine, run_genv) -> None:
    result = run_genv("envs", "activate", "--eid", "e1", "--uid", "0")
    assert result.rc == 2
    assert "Traceback" not in result.err


# -- config ----------------------------------------------------------------------------


def query(run_genv, *fields: str) -> str:
    result = run_genv("envs", "query", "--eid", "e1", "--query", *fields)
    assert result.rc == 0, result
    return result.out.strip()


def test_config_gpus(env, run_genv) -> None:
    assert run_genv("envs", "config", "--eid", "e1", "gpus", "--count", "2").rc == 0
    assert query(run_genv, "config.gpus") == "2"
    assert run_genv("envs", "config", "--eid", "e1", "gpus", "--clear").rc == 0
    assert query(run_genv, "config.gpus") == ""


def test_config_name(env, run_genv) -> None:
    assert run_genv("envs", "config", "--eid", "e1", "name", "--name", "my job").rc == 0
    assert query(run_genv, "config.name") == "my job"
    assert "my job" in run_genv("envs").out
    assert run_genv("envs", "config", "--eid", "e1", "name", "--clear").rc == 0
    assert query(run_genv, "config.name") == ""


def test_config_gpu_memory(env, run_genv) -> None:
    for amount in ("4g", "42mi", "44040192", "1gi", "512k", "100b"):
        result = run_genv("envs", "config", "--eid", "e1", "gpu-memory", "--gpu-memory", amount)
        assert result.rc == 0, result
        assert query(run_genv, "config.gpu_memory") == amount
    assert run_genv("envs", "config", "--eid", "e1", "gpu-memory", "--clear").rc == 0
    assert query(run_genv, "config.gpu_memory") == ""


@pytest.mark.parametrize("amount", ["4x", "lots", "-1g", "1.5g", "4 gb", ""])
def test_config_bad_gpu_memory_is_one_line(env, run_genv, amount: str) -> None:
    run_genv("envs", "config", "--eid", "e1", "gpu-memory", "--gpu-memory", "2g")
    result = run_genv("envs", "config", "--eid", "e1", "gpu-memory", f"--gpu-memory={amount}")
    assert result.rc == 2  # a usage error, as argparse gives
    assert result.out == ""
    line = only_line(result.err)
    assert "memory" in line
    assert "Traceback" not in result.err
    assert query(run_genv, "config.gpu_memory") == "2g"


def test_config_gpu_memory_applies_to_attached_devices(env, run_genv) -> None:
    assert run_genv("devices", "attach", "--eid", "e1", "--count", "1").rc == 0
    assert run_genv("envs", "config", "--eid", "e1", "gpu-memory", "--gpu-memory", "4g").rc == 0
    line = run_genv("devices", "query", "--query", "index", "attachments").lines[0]
    assert re.fullmatch(r"0,e1\+4g\+\d\d/\d\d/\d{4}_\d\d:\d\d:\d\d", line), line


def test_config_negative_gpus_is_refused(env, run_genv) -> None:
    result = run_genv("envs", "config", "--eid", "e1", "gpus", "--count", "-1")
    assert result.rc == 2
    only_line(result.err)
    assert query(run_genv, "config.gpus") == ""


def test_config_of_an_unknown_environment(fake_machine, run_genv) -> None:
    result = run_genv("envs", "config", "--eid", "ghost", "name", "--name", "x")
    assert result.rc == 1
    assert "ghost" in only_line(result.err)


# -- deactivate and find ---------------------------------------------------------------


def test_find_by_pid(env, run_genv, sleeper) -> None:
    assert run_genv("envs", "find", "--pid", env.pid).lines == ["e1"]
    stranger = sleeper()
    result = run_genv("envs", "find", "--pid", stranger.pid)
    assert (result.rc, result.out) == (0, "")


def test_deactivate_the_last_process_ends_the_environment(env, run_genv) -> None:
    assert run_genv("devices", "attach", "--eid", "e1", "--count", "2").rc == 0
    result = run_genv("envs", "deactivate", "--pid", env.pid)
    assert (result.rc, result.out, result.err) == (0, "", "")
    assert run_genv("envs", "query", "--query", "eid").out == ""
    assert run_genv("envs", "find", "--pid", env.pid).out == ""
    assert run_genv("devices", "query", "--query", "eids").lines == ["", "", "", ""]


def test_deactivate_one_of_two_processes(env, run_genv, sleeper) -> None:
    second = sleeper()
    run_genv("envs", "activate", "--eid", "e1", "--uid", "0", "--pid", second.pid)
    assert run_genv("envs", "deactivate", "--pid", env.pid).rc == 0
    assert query(run_genv, "pids") == str(second.pid)


def test_deactivate_an_unknown_pid_changes_nothing(env, run_genv, sleeper) -> None:
    before = run_genv("envs", "ps", "--format", "json").out
    assert run_genv("envs", "deactivate", "--pid", sleeper().pid).rc == 0
    assert run_genv("envs", "ps", "--format", "json").out == before


# -- ps --------------------------------------------------------------------------------


def test_ps_table(env, run_genv) -> None:
    result = run_genv("envs", "ps")
    assert result.rc == 0
    header, row = result.lines
    assert header == ENVS_HEADER
    assert row[:8] == "e1      "
    assert row[8:24] == "root(0)         "
    assert row[24:40] == "train           "
    assert re.fullmatch(AGO, row[40:61].rstrip()), row
    assert row[61:] == str(env.pid)


def test_plain_envs_is_ps(env, run_genv) -> None:
    plain = run_genv("envs")
    assert plain.rc == 0
    assert plain.lines[0] == ENVS_HEADER
    assert plain.lines[1].split()[0] == "e1"


def test_ps_no_header(env, run_genv) -> None:
    lines = run_genv("envs", "ps", "--no-header").lines
    assert len(lines) == 1
    assert lines[0].startswith("e1 ")


def test_ps_timestamp_matches_query(env, run_genv) -> None:
    row = run_genv("envs", "ps", "--no-header", "--timestamp").lines[0]
    created = query(run_genv, "creation")
    assert re.fullmatch(TIMESTAMP, created)
    assert row[40:61].rstrip() == created


def test_ps_csv(env, run_genv, new_env) -> None:
    other = new_env("e2")
    result = run_genv("envs", "ps", "--format", "csv")
    assert result.lines[0] == "ID,USER,NAME,CREATED,PID(S)"
    first, second = (line.split(",") for line in result.lines[1:])
    assert first[:3] == ["e1", "root(0)", "train"]
    assert re.fullmatch(AGO, first[3])
    assert first[4] == str(env.pid)
    assert second[:3] == ["e2", "root(0)", ""] and second[4] == str(other.pid)
    csv_timestamps = run_genv("envs", "ps", "--format", "csv", "--no-header", "--timestamp")
    assert re.fullmatch(TIMESTAMP, csv_timestamps.lines[0].split(",")[3])


def test_ps_json(env, run_genv) -> None:
    run_genv("envs", "config", "--eid", "e1", "gpu-memory", "--gpu-memory", "4g")
    [item] = json.loads(run_genv("envs", "ps", "--format", "json").out)
    assert item["eid"] == "e1"
    assert item["uid"] == 0
    assert item["username"] == "root"
    assert item["config"] == {"name": "train", "gpus": None, "gpu_memory": "4g"}
    assert item["pids"] == [env.pid]
    assert item["kernel_ids"] == []
    assert isinstance(item["creation"], float)


def test_ps_lists_environments_oldest_first(fake_machine, run_genv, new_env) -> None:
    for eid in ("zz", "aa", "mm"):
        new_env(eid)
    rows = run_genv("envs", "ps", "--no-header").lines
    assert [row.split()[0] for row in rows] == ["zz", "aa", "mm"]
    assert run_genv("envs", "query", "--query", "eid").lines == ["zz", "aa", "mm"]


def test_ps_with_no_environments(fake_machine, run_genv) -> None:
    assert run_genv("envs", "ps").lines == [ENVS_HEADER]
    assert run_genv("envs", "ps", "--no-header").out == ""
    assert run_genv("envs", "ps", "--format", "json").out.strip() == "[]"


# -- query -----------------------------------------------------------------------------


def test_query_every_field(env, run_genv, shared_tmp) -> None:
    run_genv("envs", "config", "--eid", "e1", "gpus", "--count", "2")
    run_genv("envs", "config", "--eid", "e1", "gpu-memory", "--gpu-memory", "4g")
    fields = ["eid", "creation", "uid", "username", "config.name", "config.gpus",
              "config.gpu_memory", "pids", "kernel_ids"]
    result = run_genv("envs", "query", "--query", *fields)
    assert result.rc == 0
    [line] = result.lines
    values = line.split(",")
    assert len(values) == len(fields)
    assert values[0] == "e1"
    assert re.fullmatch(TIMESTAMP, values[1])
    assert values[2:] == ["0", "root", "train", "2", "4g", str(env.pid), ""]


def test_query_one_environment(env, run_genv, new_env) -> None:
    new_env("e2", name="other")
    assert run_genv("envs", "query", "--eid", "e2", "--query", "config.name").lines == ["other"]
    assert run_genv("envs", "query", "--query", "config.name").lines == ["train", "other"]
    unknown = run_genv("envs", "query", "--eid", "ghost", "--query", "eid")
    assert (unknown.rc, unknown.out) == (0, "")


def test_query_rejects_unknown_fields(env, run_genv) -> None:
    result = run_genv("envs", "query", "--query", "password")
    assert result.rc == 2
    assert "Traceback" not in result.err


def test_an_environment_id_from_the_shell_does_not_leak_in(env, run_genv) -> None:
    result = run_genv("envs", "query", "--query", "eid", env={"GENV_ENVIRONMENT_ID": "other"})
    assert result.lines == ["e1"]

