"""The machine file's one writer and its flat form (what the C stand-ins read)."""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from genv.backends import machine_file
from genv.backends.machine_file import (
    FLAT_MAGIC,
    compile_machine,
    flat_path,
    parse_machine,
    read_machine,
    write_machine,
)
from genv.system import procfs

GI = 1024**3


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def test_writes_json_and_its_flat_form(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    path = tmp_path / "machine.json"
    write_machine(
        path,
        [
            {"total_memory": "80gi"},
            {"total_memory": 16 * GI, "uuid": " GPU-x ", "name": "Tesla T4 %"},
        ],
        [
            {"pid": sleeper.pid, "device": 1, "used_memory": "1gi"},
            {"pid": 1, "device": 0, "used_memory": None, "start": 7},
        ],
    )
    status = path.stat()
    start = procfs.start_of(sleeper.pid)
    assert flat_path(path).read_text() == (
        f"{FLAT_MAGIC}\n"
        f"json {status.st_size} {status.st_mtime_ns}\n"
        f"boot {procfs.boot_id()}\n"
        "devices 2\n"
        f"{80 * GI} GPU-00000000-0000-0000-0000-000000000000 Simulated%20GPU\n"
        f"{16 * GI} GPU-x Tesla%20T4%20%25\n"
        "processes 2\n"
        f"1 {sleeper.pid} {GI} {start}\n"
        "0 1 - 7\n"
        "end\n"
    )
    assert stat.S_IMODE(status.st_mode) == 0o644
    assert stat.S_IMODE(flat_path(path).stat().st_mode) == 0o644
    # nothing left behind: the temporary files were renamed into place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["machine.json", "machine.json.flat"]


def test_each_write_is_newer_than_the_last(tmp_path: Path) -> None:
    path = tmp_path / "machine.json"
    times = []
    for _ in range(5):
        write_machine(path, [{"total_memory": "1gi"}])
        times.append(path.stat().st_mtime_ns)
    assert times == sorted(set(times))


def test_invalid_entries_write_nothing(tmp_path: Path) -> None:
    path = tmp_path / "machine.json"
    with pytest.raises(ValueError, match="total_memory"):
        write_machine(path, [{"total_memory": "lots"}])
    with pytest.raises(ValueError, match="pid"):
        write_machine(path, [{"total_memory": "1gi"}], [{"pid": "12", "device": 0}])
    assert list(tmp_path.iterdir()) == []


def test_a_file_in_a_shared_folder_is_replaced_not_followed(tmp_path: Path) -> None:
    """A link planted where the file goes is replaced, never written through."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = tmp_path / "machine.json"
    path.symlink_to(victim)
    flat_path(path).symlink_to(victim)
    write_machine(path, [{"total_memory": "1gi"}])
    assert victim.read_text() == "precious"
    assert not path.is_symlink() and not flat_path(path).is_symlink()


def test_compile_a_hand_written_file(tmp_path: Path) -> None:
    path = tmp_path / "machine.json"
    path.write_text('{"devices": [{"total_memory": "1gi"}]}')
    assert compile_machine(path) is None
    assert flat_path(path).read_text().splitlines()[3:] == [
        "devices 1",
        f"{GI} GPU-00000000-0000-0000-0000-000000000000 Simulated%20GPU",
        "processes 0",
        "end",
    ]


def test_compile_an_invalid_file_writes_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "machine.json"
    path.write_text('{"devices": [{}]}')
    problem = compile_machine(path)
    assert problem is not None and 'has no "total_memory"' in problem
    lines = flat_path(path).read_text().splitlines()
    assert lines[0] == FLAT_MAGIC and lines[-1] == "end"
    assert lines[2].startswith("error ") and " " not in lines[2][len("error ") :]
    assert compile_machine(tmp_path / "missing.json") is not None
    assert not flat_path(tmp_path / "missing.json").exists()


def test_command_line(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text('{"devices": []}')
    bad.write_text("{")
    command = [sys.executable, "-m", "genv.backends.machine_file"]
    result = subprocess.run([*command, str(good)], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stderr) == (0, "")
    result = subprocess.run([*command, str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "not valid JSON" in result.stderr
    assert flat_path(good).exists() and flat_path(bad).exists()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "usage" in result.stderr


def test_read_machine_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "machine.json"
    with pytest.raises(machine_file.MachineFileError, match="does not exist"):
        read_machine(path)
    path.write_bytes(b" " * (machine_file.MAX_FILE_BYTES + 1))
    with pytest.raises(machine_file.MachineFileError, match="larger than"):
        read_machine(path)
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with pytest.raises(machine_file.MachineFileError) as raised:
        read_machine(folder)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "document",
    [
        None,
        3,
        "text",
        [],
        {"devices": "x"},
        {"devices": [None]},
        {"devices": [[1]]},
        {"devices": [], "processes": [1]},
        {"devices": [], "processes": [{"pid": True, "device": 0}]},
        {"devices": [{"total_memory": [1]}]},
        {"devices": [{"total_memory": {}}]},
        {"devices": [{"total_memory": 1, "name": 5}]},
    ],
)
def test_wrong_types_are_value_errors(document: object) -> None:
    with pytest.raises(ValueError) as raised:
        parse_machine(document)
    assert "\n" not in str(raised.value)
