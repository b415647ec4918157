"""Environments end with their processes; GPUs come and go; no command has to clean up."""

from __future__ import annotations

import json
import os
import time

from genv.domain.models import Attachment, Environment, RegisteredProcess

from support import encode_records, start_of


def end(process) -> None:
    process.kill()
    process.wait(timeout=10)


def attach(run_genv, eid: str, *options: str) -> str:
    result = run_genv("devices", "attach", "--eid", eid, *options)
    assert result.rc == 0, result
    return result.out.strip()


def test_a_killed_process_ends_its_environment_and_attachments(fake_machine, run_genv,
                                                               new_env) -> None:
    doomed = new_env("doomed", name="d")
    new_env("kept", name="k")
    assert attach(run_genv, "doomed", "--count", "2") == "0,1"
    assert attach(run_genv, "kept", "--count", "1") == "2"
    state_before = fake_machine.state_file(0).read_bytes()
    end(doomed)
    # no other command ran: readers drop what has ended
    envs = run_genv("envs")
    assert envs.rc == 0
    assert [line.split()[0] for line in envs.lines[1:]] == ["kept"]
    devices = run_genv("devices")
    assert devices.rc == 0
    assert [line.strip() for line in devices.lines[1:]][:2] == ["0", "1"]
    assert "doomed" not in devices.out
    assert run_genv("devices", "find", "--eid", "doomed").out.strip() == ""
    assert fake_machine.state_file(0).read_bytes() == state_before  # readers never write
    # the freed devices can be attached again
    assert attach(run_genv, "kept", "--count", "3") == "0,1,2"


def test_an_environment_lives_while_any_process_does(fake_machine, run_genv, new_env,
                                                     sleeper) -> None:
    first = new_env("e1")
    second = sleeper()
    run_genv("envs", "activate", "--eid", "e1", "--uid", "0", "--pid", str(second.pid))
    attach(run_genv, "e1", "--count", "1")
    end(first)
    assert run_genv("envs", "query", "--query", "pids").lines == [str(second.pid)]
    assert run_genv("devices", "find", "--eid", "e1").out == "0\n"
    end(second)
    assert run_genv("envs", "query", "--query", "eid").out == ""
    assert run_genv("devices", "query", "--query", "eids").lines == ["", "", "", ""]


def test_a_reused_pid_does_not_keep_an_environment(fake_machine, run_genv, sleeper) -> None:
    assert run_genv("envs").rc == 0  # makes the state folder
    process = sleeper()
    started = time.time()
    # A record of an older process that had the same pid: same pid, earlier start.
    stale = Environment("stale", 0, "root", started - 3600,
                        processes=(RegisteredProcess(process.pid, start_of(process.pid) - 360),))
    live = Environment("live", 0, "root", started,
                       processes=(RegisteredProcess(process.pid, start_of(process.pid)),))
    path = fake_machine.state_file(0)
    path.write_bytes(encode_records(0, [stale, live], [
        Attachment(0, "stale", 0, started), Attachment(1, "live", 0, started)]))
    assert run_genv("envs", "query", "--query", "eid").lines == ["live"]
    assert run_genv("devices", "query", "--query", "index", "eids").lines == [
        "0,", "1,live", "2,", "3,"]
    assert run_genv("envs", "find", "--pid", str(process.pid)).lines == ["live"]
    # device 0 is free again for anyone
    assert attach(run_genv, "live", "--index", "0") == "0,1"


def test_activate_records_the_process_start_time(fake_machine, run_genv, sleeper) -> None:
    first = sleeper()
    run_genv("envs", "activate", "--eid", "e1", "--uid", "0", "--pid", str(first.pid))
    data = json.loads(fake_machine.state_file(0).read_bytes())
    [[pid, start]] = data["environments"][0]["processes"]
    assert (pid, start) == (first.pid, start_of(first.pid))


def test_a_new_device_shows_up(fake_machine, run_genv, new_env) -> None:
    fake_machine.set_devices(2)
    assert run_genv("devices", "query", "--query", "index").lines == ["0", "1"]
    fake_machine.set_devices(3)
    result = run_genv("devices")
    assert (result.rc, result.err) == (0, "")
    assert [line.strip() for line in result.lines[1:]] == ["0", "1", "2"]
    new_env("e1")
    assert attach(run_genv, "e1", "--count", "3") == "0,1,2"


def test_a_removed_device_keeps_its_attachment_with_a_warning(fake_machine, run_genv,
                                                              new_env) -> None:
    new_env("e1", name="gone")
    new_env("e2")
    assert attach(run_genv, "e1", "--index", "3") == "3"
    fake_machine.set_devices(3)
    for command in (["devices"], ["devices", "ps", "--format", "csv"],
                    ["devices", "ps", "--format", "json"],
                    ["devices", "query", "--query", "index", "eids", "total_memory"]):
        result = run_genv(*command)
        assert result.rc == 0, (command, result)
        assert "Traceback" not in result.err
        warnings = [line for line in result.err.splitlines() if line.strip()]
        assert len(warnings) == 1, result
        assert "e1" in warnings[0] and "3" in warnings[0]
    table = run_genv("devices").lines
    assert table[-1].startswith("3       e1          gone")
    assert run_genv("devices", "query", "--query", "index", "eids",
                    "total_memory").lines[-1] == "3,e1,"
    items = json.loads(run_genv("devices", "ps", "--format", "json").out)
    assert items[-1]["index"] == 3 and items[-1]["present"] is False
    # what can be done about it: the device cannot be attached anew, but can be detached
    refused = run_genv("devices", "attach", "--eid", "e2", "--index", "3")
    assert refused.rc == 1
    assert "Traceback" not in refused.err
    assert attach(run_genv, "e2", "--count", "3") == "0,1,2"
    detached = run_genv("devices", "detach", "--eid", "e1", "--index", "3")
    assert (detached.rc, detached.out.strip()) == (0, "")
    after = run_genv("devices")
    assert (after.rc, after.err) == (0, "")


def test_an_empty_or_broken_machine_file(fake_machine, run_genv, new_env) -> None:
    new_env("e1")
    fake_machine.set_devices(0)
    result = run_genv("devices")
    assert (result.rc, result.lines) == (0, ["ID      ENV ID      ENV NAME        ATTACHED"])
    refused = run_genv("devices", "attach", "--eid", "e1", "--count", "1")
    assert refused.rc == 1
    fake_machine.path.write_text("{not json")
    broken = run_genv("devices")
    assert broken.rc == 1
    assert "Traceback" not in broken.err
    assert str(fake_machine.path) in broken.err.strip()
    assert len(broken.err.strip().splitlines()) == 1
    os.unlink(fake_machine.path)
    missing = run_genv("devices", "attach", "--eid", "e1", "--count", "1")
    assert missing.rc == 1
    assert len(missing.err.strip().splitlines()) == 1
