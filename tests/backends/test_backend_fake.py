"""The simulated machine: real ``sleep`` processes stand in for GPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from genv.backends.base import BackendError
from genv.backends.fake import DEFAULT_NAME, FakeBackend, default_uuid
from genv.backends.machine_file import write_machine

GI = 1024**3
MI = 1024**2


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Three real processes to list as GPU processes; reaped at the end."""
    processes = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def write(path: Path, machine: object) -> None:
    """Rewrite the file so that its size or mtime changes, as an editor would."""
    path.write_text(json.dumps(machine))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def test_devices_defaults_and_memory_forms(tmp_path: Path) -> None:
    path = tmp_path / "machine.json"
    write(
        path,
        {
            "devices": [
                {"total_memory": "80gi"},
                {"total_memory": 16 * GI, "uuid": "GPU-custom", "name": "Tesla T4"},
            ]
        },
    )
    snapshot = FakeBackend(path).snapshot()
    assert [d.index for d in snapshot.devices] == [0, 1]
    first, second = snapshot.devices
    assert first.uuid == default_uuid(0) == "GPU-00000000-0000-0000-0000-000000000000"
    assert default_uuid(12) == "GPU-00000000-0000-0000-0000-00000000000c"
    assert first.name == DEFAULT_NAME
    assert first.total_memory == 80 * GI
    assert first.used_memory == 0
    assert (second.uuid, second.name, second.total_memory) == ("GPU-custom", "Tesla T4", 16 * GI)
    assert snapshot.processes == ()
    assert snapshot.errors == ()


def test_live_processes_are_reported_and_a_killed_one_drops_out(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    a, b, c = sleepers
    path = tmp_path / "machine.json"
    write(
        path,
        {
            "devices": [{"total_memory": "80gi"}, {"total_memory": "40gi"}],
            "processes": [
                {"pid": a.pid, "device": 0, "used_memory": "7295mi"},
                {"pid": b.pid, "device": 0, "used_memory": 1024},
                {"pid": c.pid, "device": 1, "used_memory": "2gi"},
                {"pid": c.pid, "device": 0},
            ],
        },
    )
    backend = FakeBackend(path)
    snapshot = backend.snapshot()
    by_key = {(p.pid, p.device_index): p for p in snapshot.processes}
    assert set(by_key) == {(a.pid, 0), (b.pid, 0), (c.pid, 1), (c.pid, 0)}
    assert by_key[(a.pid, 0)].used_memory == 7295 * MI
    assert by_key[(a.pid, 0)].device_uuid == default_uuid(0)
    assert by_key[(c.pid, 0)].used_memory is None
    assert snapshot.devices[0].used_memory == 7295 * MI + 1024
    assert snapshot.devices[1].used_memory == 2 * GI

    a.kill()
    a.wait()
    snapshot = backend.snapshot()
    assert a.pid not in {p.pid for p in snapshot.processes}
    assert snapshot.devices[0].used_memory == 1024

    # A zombie (killed, not yet reaped) has given its memory back too.
    b.kill()
    os.waitid(os.P_PID, b.pid, os.WEXITED | os.WNOWAIT)  # a zombie now, still unreaped
    assert b.pid not in {p.pid for p in backend.snapshot().processes}
    assert backend.snapshot().devices[0].used_memory == 0


def test_processes_false_keeps_device_usage(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    path = tmp_path / "machine.json"
    pid = sleepers[0].pid
    write(
        path,
        {
            "devices": [{"total_memory": "1gi"}],
            "processes": [{"pid": pid, "device": 0, "used_memory": "100mi"}],
        },
    )
    snapshot = FakeBackend(path).snapshot(processes=False)
    assert snapshot.processes == ()
    assert snapshot.devices[0].used_memory == 100 * MI


def test_devices_added_and_removed_show_up(tmp_path: Path) -> None:
    path = tmp_path / "machine.json"
    write(path, {"devices": [{"total_memory": "8gi"}]})
    backend = FakeBackend(path)
    assert len(backend.snapshot().devices) == 1
    write(path, {"devices": [{"total_memory": "8gi"}, {"total_memory": "8gi"}]})
    assert [d.index for d in backend.snapshot().devices] == [0, 1]
    write(path, {"devices": []})
    assert backend.snapshot().devices == ()


def test_unchanged_file_is_not_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import genv.backends.machine_file as machine_file

    path = tmp_path / "machine.json"
    write(path, {"devices": [{"total_memory": "8gi"}]})
    backend = FakeBackend(path)
    calls = []
    real = machine_file.parse_machine
    monkeypatch.setattr(machine_file, "parse_machine", lambda data: calls.append(1) or real(data))
    backend.snapshot()
    backend.snapshot()
    assert len(calls) == 1
    write(path, {"devices": [{"total_memory": "16gi"}]})
    assert backend.snapshot().devices[0].total_memory == 16 * GI
    assert len(calls) == 2


def test_process_on_missing_device_is_an_error_not_fatal(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    path = tmp_path / "machine.json"
    pid = sleepers[0].pid
    write(
        path,
        {
            "devices": [{"total_memory": "8gi"}],
            "processes": [
                {"pid": pid, "device": 3, "used_memory": "1gi"},
                {"pid": pid, "device": 0, "used_memory": "1gi"},
            ],
        },
    )
    snapshot = FakeBackend(path).snapshot()
    assert [(p.pid, p.device_index) for p in snapshot.processes] == [(pid, 0)]
    assert len(snapshot.errors) == 1
    assert "device 3" in snapshot.errors[0] and str(pid) in snapshot.errors[0]


def test_path_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "machine.json"
    write(path, {"devices": [{"total_memory": "8gi"}]})
    monkeypatch.setenv("GENV_FAKE_MACHINE", str(path))
    assert FakeBackend().path == path
    monkeypatch.delenv("GENV_FAKE_MACHINE")
    with pytest.raises(BackendError, match="GENV_FAKE_MACHINE"):
        FakeBackend()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "does not exist"),
        ("{not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"devices": {}}', '"devices" must be a list'),
        ('{"devices": [{}]}', 'devices[0] has no "total_memory"'),
        ('{"devices": [{"total_memory": "lots"}]}', "devices[0].total_memory"),
        ('{"devices": [{"total_memory": -1}]}', "negative"),
        ('{"devices": [{"total_memory": true}]}', "devices[0].total_memory"),
        ('{"devices": [{"total_memory": 1, "uuid": 5}]}', "devices[0].uuid"),
        (
            '{"devices": [{"total_memory": 1, "uuid": "GPU-a"},'
            ' {"total_memory": 1, "uuid": "GPU-a"}]}',
            "GPU-a",
        ),
        ('{"devices": [], "processes": {}}', '"processes" must be a list'),
        ('{"devices": [], "processes": [{"device": 0}]}', "processes[0].pid"),
        ('{"devices": [], "processes": [{"pid": "12", "device": 0}]}', "processes[0].pid"),
        ('{"devices": [], "processes": [{"pid": 0, "device": 0}]}', "processes[0].pid"),
        ('{"devices": [], "processes": [{"pid": 5}]}', "processes[0].device"),
        (
            '{"devices": [], "processes": [{"pid": 5, "device": 0, "used_memory": "1q"}]}',
            "processes[0].used_memory",
        ),
        (
            '{"devices": [], "processes": [{"pid": 5, "device": 0}, {"pid": 5, "device": 0}]}',
            "already listed",
        ),
        ('{"devices": [], "processes": [{"pid": 5, "device": 0, "start": -1}]}', "start"),
        ('{"devices": [], "processes": [{"pid": 5, "device": 0, "start": "9"}]}', "start"),
        ('{"devices": [], "boot_id": "a b"}', "boot_id"),
        ('{"devices": [], "boot_id": 7}', "boot_id"),
        # odd numbers, huge amounts, deep nesting, bytes that are not text: one line each
        ('{"devices": [{"total_memory": 18446744073709551615}]}', "too large"),
        ('{"devices": [{"total_memory": "99999999999999999999gi"}]}', "too large"),
        ('{"devices": [{"total_memory": 1e400}]}', "total_memory"),
        ('{"devices": [{"total_memory": ' + "1" * 5000 + "}]}", "integer string conversion"),
        ('{"devices": [{"total_memory": NaN}]}', "total_memory"),
        ('{"devices": [], "processes": [{"pid": 1e3, "device": 0}]}', "processes[0].pid"),
        (
            '{"devices": [], "processes": [{"pid": 99999999999999999999999, "device": 0}]}',
            "processes[0].pid",
        ),
        ('{"devices": [{"total_memory": 1, "name": "a\\u0000b"}]}', "control"),
        ('{"devices": [{"total_memory": 1, "name": "\\ud800"}]}', "surrogate"),
        ('{"devices": [{"total_memory": 1, "uuid": "' + "x" * 96 + '"}]}', "95 bytes"),
        ('{"devices": ' + "[" * 100000 + "]" * 100000 + "}", "nested too deeply"),
        ('{"devices": [{"total_memory": 1}' + ', {"total_memory": 1}' * 1024 + "]}", "1024"),
    ],
)
def test_bad_machine_file_is_one_line_backend_error(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "machine.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BackendError) as raised:
        FakeBackend(path).snapshot()
    message = str(raised.value)
    assert "\n" not in message
    assert str(path) in message
    assert problem in message


def test_bytes_that_are_not_text(tmp_path: Path) -> None:
    path = tmp_path / "machine.json"
    path.write_bytes(b'{"devices": [{"total_memory": "\xff"}]}')
    with pytest.raises(BackendError, match="not UTF-8"):
        FakeBackend(path).snapshot()


def test_a_file_fixed_after_an_error_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "machine.json"
    path.write_text("{")
    backend = FakeBackend(path)
    with pytest.raises(BackendError):
        backend.snapshot()
    write(path, {"devices": [{"total_memory": "1gi"}]})
    assert len(backend.snapshot().devices) == 1


# -- an entry counts only for the very process it describes ---------------------------------


def boot_ns_to_wall_ns(ticks: int) -> int:
    """The wall-clock time (ns) at which a process with this start began."""
    from genv.system import procfs

    offset = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    return offset + ticks * 1_000_000_000 // procfs.clock_ticks()


def test_the_writer_records_each_process_start(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    from genv.system import procfs

    a, b, _ = sleepers
    path = tmp_path / "machine.json"
    write_machine(
        path,
        [{"total_memory": "8gi"}],
        [
            {"pid": a.pid, "device": 0, "used_memory": "1gi"},
            {"pid": b.pid, "device": 0, "used_memory": "1gi"},
        ],
    )
    document = json.loads(path.read_text())
    assert document["boot_id"] == procfs.boot_id()
    assert [entry["start"] for entry in document["processes"]] == [
        procfs.start_of(a.pid),
        procfs.start_of(b.pid),
    ]
    assert sorted(p.pid for p in FakeBackend(path).snapshot().processes) == sorted([a.pid, b.pid])


def test_an_entry_whose_start_is_another_process_s_is_not_it(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    """The pid runs, but a process of another start: a stranger that reuses the pid."""
    from genv.system import procfs

    a, b, _ = sleepers
    start = procfs.start_of(a.pid)
    assert start is not None
    path = tmp_path / "machine.json"
    write_machine(
        path,
        [{"total_memory": "8gi"}],
        [
            {"pid": a.pid, "device": 0, "used_memory": "1gi", "start": start + 1},
            {"pid": b.pid, "device": 0, "used_memory": "2gi"},
        ],
    )
    snapshot = FakeBackend(path).snapshot()
    assert [p.pid for p in snapshot.processes] == [b.pid]
    assert snapshot.devices[0].used_memory == 2 * GI


def test_an_entry_of_another_boot_is_no_process_of_this_one(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    from genv.system import procfs

    a = sleepers[0]
    path = tmp_path / "machine.json"
    entry = {"pid": a.pid, "device": 0, "used_memory": "1gi", "start": procfs.start_of(a.pid)}
    write(
        path,
        {"boot_id": "another-boot", "devices": [{"total_memory": "8gi"}], "processes": [entry]},
    )
    assert FakeBackend(path).snapshot().processes == ()
    write(
        path,
        {"boot_id": procfs.boot_id(), "devices": [{"total_memory": "8gi"}], "processes": [entry]},
    )
    assert [p.pid for p in FakeBackend(path).snapshot().processes] == [a.pid]


def test_an_entry_without_start_is_no_process_that_started_after_the_file(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    """Written (by hand, say) before the process with that pid started: not that process."""
    from genv.system import procfs

    a = sleepers[0]
    start = procfs.start_of(a.pid)
    assert start is not None
    path = tmp_path / "machine.json"
    machine = {
        "devices": [{"total_memory": "8gi"}],
        "processes": [{"pid": a.pid, "device": 0, "used_memory": "1gi"}],
    }
    path.write_text(json.dumps(machine))
    # the file was last written two ticks before the process started
    before = boot_ns_to_wall_ns(start - 2)
    os.utime(path, ns=(before, before))
    backend = FakeBackend(path)
    assert backend.snapshot().processes == ()
    # written after it started: the entry is that process
    os.utime(path, ns=(time.time_ns(), time.time_ns()))
    assert [p.pid for p in backend.snapshot().processes] == [a.pid]
    # an entry with start None is written without one
    write_machine(
        path,
        [{"total_memory": "8gi"}],
        [{"pid": a.pid, "device": 0, "used_memory": "1gi", "start": None}],
    )
    assert "start" not in json.loads(path.read_text())["processes"][0]


def test_an_entry_for_a_pid_no_process_has_is_written_without_start(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    path = tmp_path / "machine.json"
    write_machine(path, [{"total_memory": "8gi"}], [{"pid": gone.pid, "device": 0}])
    assert "start" not in json.loads(path.read_text())["processes"][0]
    assert FakeBackend(path).snapshot().processes == ()


def test_a_long_name_is_cut_as_nvml_cuts_it(tmp_path: Path) -> None:
    path = tmp_path / "machine.json"
    write(path, {"devices": [{"total_memory": "1k", "name": "\u00e9" * 60}]})
    assert FakeBackend(path).snapshot().devices[0].name == "\u00e9" * 47
