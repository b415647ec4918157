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
    deadline = time.monotonic() + 5
    while backend.snapshot().devices[0].used_memory and time.monotonic() < deadline:
        time.sleep(0.01)
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
    import genv.backends.fake as fake

    path = tmp_path / "machine.json"
    write(path, {"devices": [{"total_memory": "8gi"}]})
    backend = FakeBackend(path)
    calls = []
    real = fake.parse_machine
    monkeypatch.setattr(fake, "parse_machine", lambda data: calls.append(1) or real(data))
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


def test_a_file_fixed_after_an_error_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "machine.json"
    path.write_text("{")
    backend = FakeBackend(path)
    with pytest.raises(BackendError):
        backend.snapshot()
    write(path, {"devices": [{"total_memory": "1gi"}]})
    assert len(backend.snapshot().devices) == 1
