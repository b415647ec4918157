"""Lines and programs the end-to-end enforcement tests share, and the JSON log checker."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

IGNORES_SIGTERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


# Counts the SIGTERMs it gets and survives them; says the count for each line on its stdin. A
# signal sent before the line is written interrupts the blocking read and is counted first.
COUNTS_SIGTERM = (
    "import signal, sys\n"
    "count = 0\n"
    "def term(*_):\n"
    "    global count\n"
    "    count += 1\n"
    "signal.signal(signal.SIGTERM, term)\n"
    "print('ready', flush=True)\n"
    "for _ in sys.stdin:\n"
    "    print(count, flush=True)\n"
)


@contextlib.contextmanager
def sigterm_counter() -> Iterator[tuple[subprocess.Popen, Callable[[], int]]]:
    """A real process that survives SIGTERM, and a function that asks how many it got."""
    process = subprocess.Popen([sys.executable, "-c", COUNTS_SIGTERM], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"

        def count() -> int:
            process.stdin.write("?\n")
            process.stdin.flush()
            return int(process.stdout.readline())

        yield process, count
    finally:
        process.kill()
        process.wait(timeout=5)
        process.stdin.close()
        process.stdout.close()


def not_in_env(pid: int) -> str:
    return f"Process {pid} is not running in a GPU environment"


def terminating(pid: int, eid: str = "N/A", devices: str = "0") -> str:
    return f"Terminating process {pid} from environment {eid} that is running on GPU(s) {devices}"


# -- the JSON log schema -------------------------------------------------------------------

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "log-schema.json"
_validator = None
VALIDATED: list[dict] = []  # every JSON line the enforcement tests produced, once validated


def log_validator():
    """docs/log-schema.json, as a validator (checked itself once)."""
    global _validator
    if _validator is None:
        import jsonschema

        schema = json.loads(SCHEMA_PATH.read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        _validator = jsonschema.Draft202012Validator(schema)
    return _validator


def json_lines(text: str) -> list[dict]:
    """Every line of ``text`` (genv enforce --log-format json's stdout) parsed and validated
    against the schema; an invalid line fails the test that produced it."""
    validator = log_validator()
    records = []
    for line in text.splitlines():
        record = json.loads(line)
        errors = sorted(validator.iter_errors(record), key=str)
        assert not errors, f"{line}\ndoes not follow docs/log-schema.json: {errors[0].message}"
        records.append(record)
    VALIDATED.extend(records)
    return records


# -- acting as another user ----------------------------------------------------------------


def as_user(user, action) -> object:  # noqa: ANN001 - a conftest User and any callable
    """Run ``action()`` in a forked child that became ``user`` (uid, gid, no groups), as that
    user would: file operations in the state folder, say. Returns what it returned (repr'd);
    what it raised is raised here as an AssertionError."""
    import os
    import traceback

    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # never returns into pytest
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(user.gid)
            os.setuid(user.uid)
            said = "ok " + repr(action())
            code = 0
        except BaseException:
            said = "error " + traceback.format_exc()
        finally:
            try:
                os.write(write, said.encode())
            finally:
                os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read().decode()
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise AssertionError(f"as {user.name}: {said}")
    return said[3:]
