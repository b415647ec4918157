"""The Grafana dashboards ``genv monitor`` provisions: overview, per user, enforcement.

Every query names only metrics the exporter (genv.metrics.families) or the daemon
(genv.metrics.enforcement) serves; a test checks that against both, live.
"""

from __future__ import annotations

from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "genv-prometheus"}
USER = 'username=~"$user"'


class _Board:
    """A dashboard being laid out: panels fill rows of 24 columns, left to right."""

    def __init__(self, uid: str, title: str, description: str) -> None:
        self.uid = uid
        self.title = title
        self.description = description
        self.panels: list[dict[str, Any]] = []
        self.variables: list[dict[str, Any]] = []
        self._x = 0
        self._y = 0
        self._row_height = 0

    def panel(
        self,
        kind: str,
        title: str,
        targets: list[tuple[str, str]],
        width: int = 12,
        height: int = 8,
        unit: str | None = None,
        description: str = "",
        instant: bool = False,
        **options: Any,
    ) -> None:
        if self._x + width > 24:
            self._x = 0
            self._y += self._row_height
            self._row_height = 0
        panel: dict[str, Any] = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DATASOURCE,
            "gridPos": {"x": self._x, "y": self._y, "w": width, "h": height},
            "targets": [
                {
                    "refId": chr(ord("A") + number),
                    "datasource": DATASOURCE,
                    "expr": expr,
                    "legendFormat": legend,
                    "instant": instant,
                    "range": not instant,
                    **({"format": "table"} if kind == "table" else {}),
                }
                for number, (expr, legend) in enumerate(targets)
            ],
            "fieldConfig": {"defaults": {"unit": unit} if unit else {}, "overrides": []},
            "options": options,
        }
        self.panels.append(panel)
        self._x += width
        self._row_height = max(self._row_height, height)

    def user_variable(self) -> None:
        self.variables.append(
            {
                "name": "user",
                "label": "User",
                "type": "query",
                "datasource": DATASOURCE,
                "query": {
                    "query": "label_values(genv_user_gpu_memory_used_bytes, username)",
                    "refId": "users",
                },
                "definition": "label_values(genv_user_gpu_memory_used_bytes, username)",
                "refresh": 2,
                "multi": True,
                "includeAll": True,
                "allValue": ".*",
                "current": {"text": "All", "value": "$__all"},
                "sort": 1,
            }
        )

    def document(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["genv"],
            "timezone": "browser",
            "editable": True,
            "refresh": "10s",
            "schemaVersion": 36,
            "time": {"from": "now-1h", "to": "now"},
            "templating": {"list": self.variables},
            "annotations": {"list": []},
            "panels": self.panels,
        }


def overview() -> dict[str, Any]:
    board = _Board(
        "genv-overview",
        "genv: overview",
        "Devices, environments and users of the machines genv shares",
    )
    for title, expr in (
        ("Environments", "sum(genv_environments_total)"),
        ("Users", "sum(genv_users_total)"),
        ("GPU processes", "sum(genv_processes_total)"),
        (
            "GPU processes outside environments",
            'sum(genv_gpu_processes{membership!="in-env"})',
        ),
    ):
        board.panel("stat", title, [(expr + " or vector(0)", "")], width=6, height=4)
    board.panel(
        "gauge",
        "Devices attached",
        [
            (
                "(sum(genv_attached_devices_total) or vector(0)) "
                "/ count(genv_device_memory_total_bytes) * 100",
                "",
            )
        ],
        width=6,
        height=6,
        unit="percent",
    )
    board.panel(
        "gauge",
        "Memory used",
        [("sum(genv_device_memory_used_bytes) / sum(genv_device_memory_total_bytes) * 100", "")],
        width=6,
        height=6,
        unit="percent",
    )
    board.panel(
        "gauge",
        "Memory reserved by capacities",
        [
            (
                "sum(genv_device_memory_reserved_bytes) "
                "/ sum(genv_device_memory_total_bytes) * 100",
                "",
            )
        ],
        width=6,
        height=6,
        unit="percent",
    )
    board.panel(
        "gauge",
        "Compute utilization",
        [("avg(genv_device_utilization)", "")],
        width=6,
        height=6,
        unit="percent",
    )
    board.panel(
        "timeseries",
        "Device memory: used and reserved",
        [
            ("genv_device_memory_used_bytes", "{{hostname}} GPU {{index}} used"),
            ("genv_device_memory_reserved_bytes", "{{hostname}} GPU {{index}} reserved"),
        ],
        width=12,
        unit="bytes",
        description="Reserved: the capacities of the environments attached to the device",
    )
    board.panel(
        "timeseries",
        "Device compute utilization",
        [("genv_device_utilization", "{{hostname}} GPU {{index}}")],
        width=12,
        unit="percent",
    )
    board.panel(
        "timeseries",
        "Device temperature",
        [("genv_device_temperature", "{{hostname}} GPU {{index}}")],
        width=12,
        unit="celsius",
    )
    board.panel(
        "timeseries",
        "GPU processes by membership",
        [("sum by (membership) (genv_gpu_processes)", "{{membership}}")],
        width=12,
        description="in-env, no-env, impostor (claims another user's environment), unknown",
    )
    board.panel(
        "table",
        "Devices",
        [
            ("genv_device_info", ""),
            ("genv_device_attached_environments", ""),
        ],
        width=12,
        instant=True,
    )
    board.panel(
        "stat",
        "State files that cannot be used",
        [("sum(genv_state_problems) or vector(0)", "")],
        width=6,
        height=4,
    )
    board.panel(
        "stat",
        "Seconds since the exporter read the machine",
        [("time() - max(genv_exporter_last_collection_timestamp_seconds)", "")],
        width=6,
        height=4,
        unit="s",
    )
    return board.document()


def users() -> dict[str, Any]:
    board = _Board(
        "genv-users",
        "genv: per user",
        "GPU memory and devices of each user against what their environments were given",
    )
    board.user_variable()
    board.panel(
        "timeseries",
        "GPU memory used and capacity",
        [
            (f"genv_user_gpu_memory_used_bytes{{{USER}}}", "{{hostname}} {{username}} used"),
            (
                f"genv_user_gpu_memory_capacity_bytes{{{USER}}}",
                "{{hostname}} {{username}} capacity",
            ),
        ],
        unit="bytes",
        description="Used: every GPU process of the user. Capacity: what their environments "
        "may use (the whole device where an environment has no capacity)",
    )
    board.panel(
        "bargauge",
        "Memory used of capacity",
        [
            (
                f"genv_user_gpu_memory_used_bytes{{{USER}}} "
                f"/ genv_user_gpu_memory_capacity_bytes{{{USER}}} * 100",
                "{{hostname}} {{username}}",
            )
        ],
        unit="percent",
        instant=True,
    )
    board.panel(
        "timeseries",
        "Devices: attached and in use",
        [
            (f"genv_user_attached_devices_total{{{USER}}}", "{{hostname}} {{username}} attached"),
            (f"genv_user_devices_in_use{{{USER}}}", "{{hostname}} {{username}} in use"),
        ],
    )
    board.panel(
        "timeseries",
        "Environments and GPU processes",
        [
            (f"genv_user_environments_total{{{USER}}}", "{{hostname}} {{username}} environments"),
            (f"genv_user_gpu_processes{{{USER}}}", "{{hostname}} {{username}} GPU processes"),
        ],
    )
    board.panel(
        "table",
        "Environments: memory used and capacity per device",
        [
            (f"genv_environment_gpu_memory_used_bytes{{{USER}}}", ""),
            (f"genv_environment_gpu_memory_capacity_bytes{{{USER}}}", ""),
            (f"genv_environment_info{{{USER}}}", ""),
        ],
        width=24,
        unit="bytes",
        instant=True,
    )
    board.panel(
        "table",
        "State files that cannot be used",
        [(f"genv_user_state_problem{{{USER}}}", "")],
        width=24,
        height=5,
        instant=True,
    )
    return board.document()


def enforcement() -> dict[str, Any]:
    board = _Board(
        "genv-enforcement",
        "genv: enforcement",
        "What genv enforce found and did, and how its cycles go (genv enforce --metrics-port)",
    )
    board.panel(
        "stat",
        "Seconds since the last complete cycle",
        [("time() - max(genv_enforce_last_cycle_timestamp_seconds)", "")],
        width=6,
        height=4,
        unit="s",
    )
    board.panel(
        "stat",
        "Current violations",
        [("sum(genv_enforce_violations)", "")],
        width=6,
        height=4,
    )
    board.panel(
        "stat",
        "Hosts not answering",
        [("max(genv_enforce_hosts_not_answering)", "")],
        width=6,
        height=4,
    )
    board.panel(
        "stat",
        "Dry run",
        [("max(genv_enforce_dry_run)", "")],
        width=6,
        height=4,
    )
    board.panel(
        "timeseries",
        "Violations by rule",
        [("sum by (rule) (genv_enforce_violations)", "{{rule}}")],
    )
    board.panel(
        "timeseries",
        "Terminations (SIGTERM) by rule",
        [
            (
                "sum by (rule) (increase(genv_enforce_terminations_total[$__rate_interval]))",
                "{{rule}}",
            )
        ],
    )
    board.panel(
        "timeseries",
        "Terminations (SIGTERM) by user",
        [
            (
                "sum by (user) (increase(genv_enforce_terminations_total[$__rate_interval]))",
                "{{user}}",
            )
        ],
    )
    board.panel(
        "timeseries",
        "SIGKILLs and detachments",
        [
            (
                "sum by (rule, user) (increase(genv_enforce_kills_total[$__rate_interval]))",
                "SIGKILL {{rule}} {{user}}",
            ),
            (
                "sum by (rule, user) (increase(genv_enforce_detachments_total[$__rate_interval]))",
                "detach {{rule}} {{user}}",
            ),
        ],
    )
    board.panel(
        "timeseries",
        "Cycle duration",
        [
            (
                f"histogram_quantile({q}, sum by (le) "
                "(rate(genv_enforce_cycle_duration_seconds_bucket[$__rate_interval])))",
                f"p{int(q * 100)}",
            )
            for q in (0.5, 0.99)
        ],
        unit="s",
    )
    board.panel(
        "timeseries",
        "Cycles and cycle errors",
        [
            ("sum(rate(genv_enforce_cycles_total[$__rate_interval]))", "cycles/s"),
            (
                "sum by (reason) (rate(genv_enforce_cycle_errors_total[$__rate_interval]))",
                "errors/s {{reason}}",
            ),
        ],
    )
    board.panel(
        "timeseries",
        "Daemon CPU",
        [('rate(process_cpu_seconds_total{job="genv-enforce"}[$__rate_interval])', "CPU")],
        unit="percentunit",
    )
    board.panel(
        "table",
        "Signals that did not land",
        [
            (
                "sum by (rule, signal, outcome) (genv_enforce_signal_outcomes_total"
                '{outcome!="signalled"})',
                "",
            )
        ],
        instant=True,
    )
    return board.document()


DASHBOARDS = {"overview": overview, "users": users, "enforcement": enforcement}
