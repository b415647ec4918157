"""The Prometheus and Grafana files of ``genv monitor``: the dashboards ask only for metrics
the exporter and the daemon serve (checked live, and each query is valid PromQL to a real
Prometheus); the files are where Prometheus and Grafana expect them; the folder is safe."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from genv.metrics.config_files import ConfigDirError, write_config

from promkit import free_port, get, samples_of, wait_http

METRIC = re.compile(r"\b(?:genv|process)_[a-z0-9_]+\b")
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$user": ".*"}


def queries(dashboard: dict) -> list[str]:
    found = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        found.append(variable["definition"])
    return found


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": (
    "_count", "_sum")}


def served_names(*pages: bytes) -> set[str]:
    """Every series name the pages declare, with samples or not yet (a labelled counter has
    none before its first event)."""
    names = {name for page in pages for name in samples_of(page)}
    for page in pages:
        for family in text_string_to_metric_families(page.decode()):
            names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def test_dashboards_ask_only_for_served_metrics(
    fake_machine, sleeper, genv_popen, prometheus, shared_tmp
):
    gpu = sleeper(env={"GENV_ENVIRONMENT_ID": "nobody"})
    fake_machine.processes = [{"pid": gpu.pid, "device": 0, "used_memory": "1gi"}]
    fake_machine.write()
    exporter_port, daemon_port = free_port(), free_port()
    folder = shared_tmp / "monitor"
    monitor = genv_popen(
        "monitor", "-p", str(exporter_port), "-i", "0.5", "--config-dir", str(folder),
        "--enforcer", f"127.0.0.1:{daemon_port}",
    )
    daemon = genv_popen(
        "enforce", "--interval", "0.5", "--dry-run", "--non-env-processes",
        "--metrics-port", str(daemon_port),
    )
    try:
        exporter_page = wait_http(f"http://127.0.0.1:{exporter_port}/metrics",
                                  alive=lambda: monitor.poll() is None)
        wait_http(f"http://127.0.0.1:{daemon_port}/metrics", alive=lambda: daemon.poll() is None)
        prometheus.start({
            "genv": [f"127.0.0.1:{exporter_port}"],
            "genv-enforce": [f"127.0.0.1:{daemon_port}"],
        })
        prometheus.wait_for("genv_enforce_cycles_total", lambda found: bool(found))
        daemon_page = get(f"http://127.0.0.1:{daemon_port}/metrics")
        served = served_names(exporter_page, daemon_page)
        boards = sorted((folder / "grafana" / "dashboards").glob("*.json"))
        assert [path.name for path in boards] == ["enforcement.json", "overview.json",
                                                 "users.json"]
        for path in boards:
            dashboard = json.loads(path.read_text())
            assert dashboard["panels"], path
            for expr in queries(dashboard):
                names = set(METRIC.findall(expr))
                assert names, expr
                assert names <= served, (path.name, expr, names - served)
                if expr.startswith("label_values("):
                    continue  # a Grafana function, not PromQL
                promql = expr
                for variable, replacement in GRAFANA_VARIABLES.items():
                    promql = promql.replace(variable, replacement)
                answer = prometheus.api("query", query=promql)
                assert answer["status"] == "success", (path.name, expr, answer)
        # what the dry run found shows on the enforcement dashboard's query
        prometheus.wait_for(
            'sum by (rule) (genv_enforce_violations{rule="non-env-processes"})',
            lambda found: found and found[0][1] == 1,
        )
    finally:
        for process in (monitor, daemon):
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=20)
    assert monitor.returncode == 0 and daemon.returncode == 0


def test_the_files_are_where_prometheus_and_grafana_look(tmp_path):
    folder = tmp_path / "monitor"
    written = write_config(folder, ["127.0.0.1:8000"], ["127.0.0.1:9101"])
    names = sorted(str(path.relative_to(folder)) for path in written)
    assert names == [
        "grafana/dashboards/enforcement.json",
        "grafana/dashboards/overview.json",
        "grafana/dashboards/users.json",
        "grafana/grafana.ini",
        "grafana/provisioning/dashboards/genv.yml",
        "grafana/provisioning/datasources/genv.yml",
        "prometheus/prometheus.yml",
    ]
    config = (folder / "prometheus" / "prometheus.yml").read_text()
    assert 'targets: ["127.0.0.1:8000"]' in config
    assert "job_name: genv-enforce" in config and '"127.0.0.1:9101"' in config
    ini = (folder / "grafana" / "grafana.ini").read_text()
    assert f"provisioning = {folder / 'grafana' / 'provisioning'}" in ini
    provider = (folder / "grafana" / "provisioning" / "dashboards" / "genv.yml").read_text()
    assert json.dumps(str(folder / "grafana" / "dashboards")) in provider
    promtool = shutil.which("promtool")
    if promtool is not None:
        check = subprocess.run([promtool, "check", "config", str(folder / "prometheus" /
                                "prometheus.yml")], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    # written again (genv monitor restarted): replaced whole, nothing left behind
    write_config(folder, ["127.0.0.1:8001"])
    assert "8001" in (folder / "prometheus" / "prometheus.yml").read_text()
    assert not list(folder.rglob(".*.tmp"))


def test_a_folder_others_could_change_is_refused(tmp_path, linux_users):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigDirError, match="not a folder of yours"):
        write_config(shared, ["127.0.0.1:8000"])
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, linux_users.alice.uid, linux_users.alice.gid)
    with pytest.raises(ConfigDirError, match="not a folder of yours"):
        write_config(theirs, ["127.0.0.1:8000"])
    mine = tmp_path / "mine"
    mine.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (mine / "prometheus").symlink_to(elsewhere)  # planted: must not be followed
    with pytest.raises(ConfigDirError, match="a link or a file"):
        write_config(mine, ["127.0.0.1:8000"])
    assert list(elsewhere.iterdir()) == []
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(ConfigDirError):
        write_config(link, ["127.0.0.1:8000"])


def test_monitor_says_where_the_files_are(fake_machine, genv_popen, shared_tmp):
    port = free_port()
    folder: Path = shared_tmp / "files"
    monitor = genv_popen("monitor", "-p", str(port), "--config-dir", str(folder))
    wait_http(f"http://127.0.0.1:{port}/metrics", alive=lambda: monitor.poll() is None)
    monitor.send_signal(signal.SIGTERM)
    _, err = monitor.communicate(timeout=20)
    assert monitor.returncode == 0, err
    assert f"serving http://127.0.0.1:{port}/metrics every 10s" in err
    assert f"Prometheus and Grafana files in {folder}" in err
    assert (folder / "prometheus" / "prometheus.yml").exists()
