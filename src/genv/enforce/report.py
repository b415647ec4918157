"""What enforcement tells the admin: the product description's lines on stdout (or one JSON
object per finding and action), and problems through logging, once per change."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

from genv.domain.memory import format_memory
from genv.enforce.events import CycleEvent
from genv.enforce.executor import Outcome
from genv.enforce.findings import Detachment, Finding, Termination

log = logging.getLogger("genv.enforce")

DRY_RUN_PREFIX = "[dry-run] "

# Every JSON line has all of these keys (null where one does not apply), so that log
# pipelines can rely on them.
RECORD_FIELDS = (
    "rule",
    "pid",
    "uid",
    "user",
    "environment",
    "device",
    "memory",
    "reason",
    "action",
)


def _devices(indices: tuple[int, ...]) -> str:
    return ",".join(str(index) for index in indices)


class Reporter:
    def __init__(
        self, json_lines: bool = False, dry_run: bool = False, stream: TextIO | None = None
    ) -> None:
        self.json_lines = json_lines
        self.dry_run = dry_run
        self.stream = stream or sys.stdout

    def _emit(self, line: str, record: dict) -> None:
        if self.json_lines:
            record = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **dict.fromkeys(RECORD_FIELDS),
                **record,
                "message": line,
            }
            if self.dry_run:
                record["dry_run"] = True
            self.stream.write(json.dumps(record) + "\n")
        else:
            self.stream.write((DRY_RUN_PREFIX if self.dry_run else "") + line + "\n")
        self.stream.flush()

    def finding(self, finding: Finding) -> None:
        self._emit(
            finding.message,
            {
                "rule": finding.rule,
                "action": "finding",
                "reason": finding.message,
                **finding.details,
            },
        )

    def terminating(self, termination: Termination) -> None:
        process = termination.process
        line = (
            f"Terminating process {process.pid} from environment {process.eid or 'N/A'} "
            f"that is running on GPU(s) {_devices(termination.devices)}"
        )
        self._emit(line, self._process_record(termination, "terminate"))
        if termination.chosen and not self.json_lines:
            self._emit(f"  because {termination.reason}", {})

    def killing(self, termination: Termination, grace: float) -> None:
        process = termination.process
        line = (
            f"Killing process {process.pid} from environment {process.eid or 'N/A'}, which "
            f"did not exit within {grace:g} seconds of SIGTERM"
        )
        self._emit(line, self._process_record(termination, "kill"))

    def detaching(self, detachment: Detachment) -> None:
        line = (
            f"Detaching environment {detachment.eid} of user {detachment.username} "
            f"from device {detachment.device_index}"
        )
        self._emit(
            line,
            {
                "rule": detachment.rule,
                "action": "detach",
                "uid": detachment.uid,
                "user": detachment.username,
                "environment": detachment.eid,
                "device": detachment.device_index,
                "reason": detachment.reason,
            },
        )
        if detachment.chosen and not self.json_lines:
            self._emit(f"  because {detachment.reason}", {})

    def _process_record(self, termination: Termination, action: str) -> dict:
        process = termination.process
        return {
            "rule": termination.rule,
            "action": action,
            "pid": process.pid,
            "uid": process.facts.uid,
            "user": process.facts.username,
            "environment": process.eid,
            "device": list(termination.devices),
            "memory": format_memory(process.total_memory),
            "reason": termination.reason,
        }

    def cycle(self, event: CycleEvent) -> None:
        """A cycle is over: nothing to print (problems are logged as they appear)."""

    def outcome(self, termination: Termination, outcome: Outcome) -> None:
        """Say what went wrong, if anything; a process that vanished is not a problem."""
        pid = termination.process.pid
        if outcome is Outcome.DENIED:
            log.error(
                "permission denied terminating process %d of %s: run genv enforce with sudo",
                pid,
                termination.process.facts.username or "another user",
            )
        elif outcome is Outcome.REUSED:
            log.warning(
                "process %d exited and its pid now belongs to another process; left alone", pid
            )
        elif outcome is Outcome.REFUSED:
            log.warning(
                "process %d is never terminated (init, genv itself, or its start time is unknown)",
                pid,
            )


class ProblemLog:
    """Logs each problem when it appears and when it goes away, not once per cycle."""

    def __init__(self) -> None:
        self._active: dict[str, str] = {}

    def update(self, problems: dict[str, str]) -> None:
        for key, message in problems.items():
            if self._active.get(key) != message:
                log.warning("%s", message)
        for key in self._active.keys() - problems.keys():
            log.info("resolved: %s", self._active[key])
        self._active = dict(problems)
