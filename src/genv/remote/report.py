"""What ``genv remote enforce`` prints: the local lines, each with the host it is about.

Plain lines start with ``[HOST] `` (as genv 1.4.3 prints what hosts say); a finding counted
across hosts (a user over a cross-host limit) has no host. JSON lines carry ``host`` (null
for those) and, for cross-host findings, ``hosts``.
"""

from __future__ import annotations

from genv.enforce.report import Reporter


class ClusterReporter(Reporter):
    host: str | None = None

    def at(self, host: str | None) -> ClusterReporter:
        """Say what follows about ``host`` (None: the cluster as a whole)."""
        self.host = host
        return self

    def _emit(self, line: str, record: dict) -> None:
        if self.json_lines:
            if record:
                record = {**record, "host": self.host}
            else:  # a "because" line: part of the record before it, in JSON
                return
        elif self.host is not None and not line.startswith("  "):
            line = f"[{self.host}] {line}"
        super()._emit(line, record)
