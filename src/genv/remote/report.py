"""What ``genv remote enforce`` prints: the local lines, each with the host it is about.

Plain lines start with ``[HOST] `` (as genv 1.4.3 prints what hosts say); a finding counted
across hosts (a user over a cross-host limit) has no host. JSON lines carry ``host`` (null
for those) and, for cross-host findings, ``hosts``.
"""

from __future__ import annotations

from typing import Any

from genv.enforce.report import Reporter, Reporters


class ClusterReporter(Reporter):
    def at(self, host: str | None) -> ClusterReporter:
        """Say what follows about ``host`` (None: the cluster as a whole); JSON lines carry
        it in the ``host`` field the local reporter keeps for this."""
        self.host = host
        return self

    def _emit(self, line: str, record: dict[str, Any] | None) -> None:
        if not self.json_lines and self.host is not None and not line.startswith("  "):
            line = f"[{self.host}] {line}"
        super()._emit(line, record)


class ClusterSinks(Reporters):
    """The ClusterReporter and the sinks beside it (the metrics of --metrics-port), told the
    same events in order; ``at`` says which host the lines that follow are about."""

    def __init__(self, reporter: ClusterReporter) -> None:
        super().__init__(reporter)
        self.reporter = reporter

    def at(self, host: str | None) -> ClusterSinks:
        self.reporter.at(host)
        return self
