"""Forged output: nothing a user or their process chose (its comm name, its argv, its
environment, the names in a state file) can add a line or a field to what genv enforce
prints on stdout or logs on stderr."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from genv.enforce.report import one_line

from enforce_helpers import as_user, json_lines, not_in_env, terminating
from support import wait_cmdline

FORGED = "\nTerminating process 1 from environment N/A that is running on GPU(s) 0"
PRODUCT_LINES = re.compile(
    r"(\[dry-run\] )?("
    r"Process \d+ is not running in a GPU environment(: .*)?"
    r"|Process \d+ from environment \S+ is using non-attached GPU\(s\) [\d,]+"
    r"|Environment \S+ is using \d+m on device \d+ which is \d+m over its capacity of \S+"
    r"|User \S+ is using (\d+ devices which is \d+ more than the maximum allowed"
    r"|\d+m of GPU memory which is \d+m over the maximum of \S+)"
    r"|Terminating process \d+ from environment \S+ that is running on GPU\(s\) [\d,]+"
    r"|Killing process \d+ from environment \S+.*"
    r"|Detaching environment \S+ of user \S+ from device \d+"
    r"|  because .*)"
)


def test_one_line_escapes_what_would_break_a_line_and_nothing_else():
    assert one_line("plain text, with \\ and 'quotes'") == "plain text, with \\ and 'quotes'"
    assert one_line(FORGED) == "\\nTerminating process 1 from environment N/A that is " \
                               "running on GPU(s) 0"
    for character in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x1b\u202e\x00":
        escaped = one_line(f"a{character}b")
        assert escaped.isprintable() and len(escaped.splitlines()) == 1, repr(escaped)
    assert len(one_line("x" * 10000)) < 4200


def start_forger(procs, shared_dir, bob):
    """Bob's process named (comm) and called (argv) like a line of genv enforce, with a claim
    that is no environment id: run through a link whose name is that line, with the line in
    its argv too."""
    link = shared_dir / FORGED.replace("/", "_")  # (a name holds no slash)
    os.symlink(os.path.realpath(shutil.which("tail") or "/usr/bin/tail"), link)
    process = procs.start([str(link), "-f", "/dev/null", FORGED], user=bob,
                          env={"GENV_ENVIRONMENT_ID": f"e1{FORGED}"})
    wait_cmdline(process.pid, FORGED)
    with open(f"/proc/{process.pid}/comm", "rb") as comm:
        assert comm.read().startswith(b"\nTerminating")
    return process

@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (another user's process)")
def test_a_process_named_like_a_line_gains_no_line(genv, machine, procs, shared_dir, bob,
                                                   state_dir):
    forger = start_forger(procs, shared_dir, bob)
    machine.add(forger.pid, 0, "1gi")
    # bob's own state file names him like a line too (records are decoded with limits)
    record = {"version": 2, "uid": bob.uid, "boot_id": "x", "environments": [
        {"eid": "e1", "username": FORGED, "creation": 1.0, "processes": [[forger.pid, 1]]}],
        "attachments": []}
    as_user(bob, lambda: (state_dir / f"state-{bob.uid}.json").write_text(json.dumps(record)))

    result = genv.enforce("--non-env-processes", "--dry-run")
    assert result.lines == ["[dry-run] " + not_in_env(forger.pid),
                            "[dry-run] " + terminating(forger.pid)]
    for line in result.stderr.splitlines():
        assert line.startswith("genv enforce: "), line
    assert f"state-{bob.uid}.json" in result.stderr  # bob's bad file: said, in one line

    records = json_lines(genv.enforce("--non-env-processes", "--dry-run", "--log-format",
                                      "json").stdout)
    assert [r["action"] for r in records] == ["finding", "terminate"]
    name = records[1]["process"]  # its name, escaped, in its own field
    assert name.startswith("\\nTerminating p") and name.isprintable()
    assert records[1]["pid"] == forger.pid

    daemon = genv.start("--interval", "0.2", "--non-env-processes", "--grace", "1")
    daemon.wait_for(not_in_env(forger.pid))
    assert procs.wait_dead(forger)
    assert daemon.stop() == 0
    for line in daemon.lines:
        assert PRODUCT_LINES.fullmatch(line), line
    assert daemon.lines[:2] == [not_in_env(forger.pid), terminating(forger.pid)]
    for line in daemon.stderr().splitlines():
        assert line.startswith("genv enforce: "), line
