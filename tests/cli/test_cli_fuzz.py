"""Whatever a user types, genv answers with output or one line and an exit code: never a
traceback. A property-based test throws arbitrary arguments at every command, in-process,
on a simulated machine whose state holds environments."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genv.cli import main as cli

# Values people type, and values they should not.
_odd = st.sampled_from([
    "", "-", "--", "0", "-1", "1", "3", "99999999999999999999999", "1e400", "nan", "inf",
    "4g", "lots", "1.5g", "e1", "e 1", "a,b", "x\ny", "\x1b[31m", "/etc/passwd", "../..",
    "'; rm -rf /", "é", "\u202e", "x" * 300, "k-1", "0,1", "--help-me",
])
_text = st.text(max_size=12) | _odd

_commands = st.sampled_from([
    ["envs"], ["envs", "ps"], ["envs", "query", "--query"], ["envs", "query", "--eid"],
    ["envs", "activate", "--eid"], ["envs", "activate", "--uid"], ["envs", "activate", "--pid"],
    ["envs", "config", "--eid", "e1", "gpus", "--count"],
    ["envs", "config", "--eid", "e1", "name", "--name"],
    ["envs", "config", "--eid", "e1", "gpu-memory", "--gpu-memory"],
    ["envs", "config", "--eid"], ["envs", "deactivate", "--pid"], ["envs", "find", "--pid"],
    ["envs", "find", "--kernel-id"], ["devices"], ["devices", "ps", "--format"],
    ["devices", "attach", "--eid", "e1", "--count"], ["devices", "attach", "--eid", "e1",
                                                      "--index"],
    ["devices", "attach", "--eid"], ["devices", "detach", "--eid", "e1", "--index"],
    ["devices", "find", "--eid"], ["devices", "query", "--query"],
    ["enforce", "--interval", "0", "--dry-run", "--max-devices-per-user"],
    ["enforce", "--interval", "0", "--dry-run", "--max-memory-per-user"],
    ["enforce", "--interval", "0", "--dry-run", "--max-devices-for-user"],
    ["enforce", "--interval", "0", "--dry-run", "--exempt-user"],
    ["enforce", "--interval", "0", "--dry-run", "--exempt-process"],
    ["enforce", "--interval"], ["enforce", "--interval", "0", "--dry-run", "--grace"],
    ["activate", "--gpus"], ["activate", "--gpu-memory"], ["activate", "--id"],
    ["attach", "--count"], ["detach", "--index"], ["config", "name"], ["config", "gpus"],
    ["status"], ["home"], ["version"], ["shell"], ["lock"], ["nosuchcommand"], [],
])


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from genv.backends.machine_file import write_machine
    from genv.core import devices, environments
    from genv.store import Store

    root = tmp_path_factory.mktemp("fuzz")
    (root / "state").mkdir(mode=0o1777)
    keeper = subprocess.Popen(["sleep", "600"], env={"GENV_ENVIRONMENT_ID": "e1"})
    write_machine(root / "machine.json", [{"total_memory": "80gi"}] * 2,
                  [{"pid": keeper.pid, "device": 1, "used_memory": "1gi"}])
    os.environ.update(GENV_GPU_BACKEND="fake", GENV_FAKE_MACHINE=str(root / "machine.json"))
    store = Store(root / "state")
    environments.register(store, "e1", os.getuid(), pid=keeper.pid)
    environments.configure(store, "e1", name="fuzzed", gpu_memory="1g")
    devices.attach(store, "e1", count=1)
    try:
        yield root
    finally:
        keeper.kill()
        keeper.wait()


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(command=_commands, values=st.lists(_text, max_size=3))
def test_no_arguments_give_a_traceback(machine: Path, monkeypatch: pytest.MonkeyPatch,
                                       command: list[str], values: list[str]) -> None:
    monkeypatch.setenv("GENV_GPU_BACKEND", "fake")
    monkeypatch.setenv("GENV_FAKE_MACHINE", str(machine / "machine.json"))
    monkeypatch.setenv("GENV_TMPDIR", str(machine / "state"))
    for name in ("GENV_ENVIRONMENT_ID", "_GENV_SHELL_PID"):
        monkeypatch.delenv(name, raising=False)
    argv = [*command, *values]
    if command[:1] == ["enforce"]:
        argv += ["--interval", "0", "--dry-run"]  # one cycle, whatever was fuzzed before
    err = io.StringIO()
    out = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = cli.main(argv)
        except SystemExit as done:  # argparse: usage errors (2) and --help (0)
            code = done.code if isinstance(done.code, int) else 1
    assert isinstance(code, int)
    assert "Traceback" not in err.getvalue()
    if code != 0 and command and command[0] != "lock":
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        assert lines, (command, values, out.getvalue())
        assert all("\x1b" not in line for line in lines)  # user text is escaped
    os.environ.pop("GENV_ENVIRONMENT_ID", None)
