"""The files ``genv monitor`` writes for Prometheus and Grafana, in genv 1.4.3's layout::

    DIR/prometheus/prometheus.yml         prometheus --config.file=DIR/prometheus/prometheus.yml
    DIR/grafana/grafana.ini               grafana-server --config DIR/grafana/grafana.ini
    DIR/grafana/provisioning/...          the Prometheus data source and the dashboards
    DIR/grafana/dashboards/*.json         overview, users, enforcement

The folder must be the caller's and writable by nobody else (it is created so when missing);
nothing is followed through a symbolic link, and each file is replaced whole, so another
user can neither redirect what is written nor change what Prometheus and Grafana read.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

from genv.errors import GenvError
from genv.metrics.dashboards import DASHBOARDS

DATASOURCE_UID = "genv-prometheus"
EXPORTER_JOB = "genv"
ENFORCER_JOB = "genv-enforce"


class ConfigDirError(GenvError):
    """The configuration folder cannot be used safely."""


def default_config_dir() -> Path:
    """Root's in /var/lib/genv/monitor, a user's in their own state folder (XDG)."""
    if os.geteuid() == 0:
        return Path("/var/lib/genv/monitor")
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local/state")
    return Path(base) / "genv" / "monitor"


def _quoted(text: str) -> str:
    """A YAML scalar: a JSON string is a valid double-quoted YAML string."""
    return json.dumps(text)


def prometheus_config(
    targets: list[str], enforcers: list[str], scrape_interval: float = 15.0
) -> str:
    seconds = f"{scrape_interval:g}s"
    lines = [
        "# Written by genv monitor: scrapes its exporter (and genv enforce --metrics-port).",
        "global:",
        f"  scrape_interval: {seconds}",
        f"  evaluation_interval: {seconds}",
        "scrape_configs:",
        f"  - job_name: {EXPORTER_JOB}",
        "    static_configs:",
        "      - targets: [" + ", ".join(_quoted(t) for t in targets) + "]",
    ]
    if enforcers:
        lines += [
            f"  - job_name: {ENFORCER_JOB}",
            "    static_configs:",
            "      - targets: [" + ", ".join(_quoted(t) for t in enforcers) + "]",
        ]
    return "\n".join(lines) + "\n"


def grafana_files(folder: Path, prometheus_url: str) -> dict[str, bytes]:
    grafana = folder / "grafana"
    files = {
        "grafana/grafana.ini": (
            "; Written by genv monitor. Run: grafana-server --config "
            f"{grafana / 'grafana.ini'}\n"
            "[paths]\n"
            f"provisioning = {grafana / 'provisioning'}\n"
            "\n[auth.anonymous]\nenabled = true\norg_role = Viewer\n"
            "\n[dashboards]\n"
            f"default_home_dashboard_path = {grafana / 'dashboards' / 'overview.json'}\n"
        ).encode(),
        "grafana/provisioning/datasources/genv.yml": (
            "apiVersion: 1\n"
            "datasources:\n"
            "  - name: Prometheus (genv)\n"
            f"    uid: {DATASOURCE_UID}\n"
            "    type: prometheus\n"
            "    access: proxy\n"
            f"    url: {_quoted(prometheus_url)}\n"
            "    isDefault: true\n"
        ).encode(),
        "grafana/provisioning/dashboards/genv.yml": (
            "apiVersion: 1\n"
            "providers:\n"
            "  - name: genv\n"
            "    folder: genv\n"
            "    type: file\n"
            "    options:\n"
            f"      path: {_quoted(str(grafana / 'dashboards'))}\n"
        ).encode(),
    }
    for name, build in DASHBOARDS.items():
        files[f"grafana/dashboards/{name}.json"] = (json.dumps(build(), indent=2) + "\n").encode()
    return files


def write_config(
    folder: Path,
    targets: list[str],
    enforcers: tuple[str, ...] | list[str] = (),
    prometheus_url: str = "http://127.0.0.1:9090",
    scrape_interval: float = 15.0,
) -> list[Path]:
    """Write every file into ``folder``; returns their paths."""
    folder = Path(os.path.abspath(folder))
    scrape = prometheus_config(targets, list(enforcers), scrape_interval)
    files = {"prometheus/prometheus.yml": scrape.encode()}
    files.update(grafana_files(folder, prometheus_url))
    root = _open_own_folder(folder)
    try:
        for name, data in files.items():
            _write(root, folder, name, data)
    finally:
        os.close(root)
    return [folder / name for name in files]


def _open_own_folder(folder: Path) -> int:
    try:
        os.makedirs(folder, mode=0o755, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as error:
        raise ConfigDirError(
            f"cannot use {folder} for the Prometheus and Grafana files: "
            f"{error.strerror or error} (give another --config-dir)"
        ) from None
    try:
        _check_own(fd, folder)
    except ConfigDirError:
        os.close(fd)
        raise
    return fd


def _check_own(fd: int, path: Path) -> None:
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigDirError(
            f"{path} is not a folder of yours that only you can write: others could change "
            "what Prometheus and Grafana read; give another --config-dir"
        )


def _write(root: int, folder: Path, name: str, data: bytes) -> None:
    parts = name.split("/")
    fd = os.dup(root)
    try:
        path = folder
        for part in parts[:-1]:
            path = path / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as error:
                raise ConfigDirError(
                    f"cannot use {path}: {error.strerror or error} (a link or a file?)"
                ) from None
            os.close(fd)
            fd = child
            _check_own(fd, path)
        temporary = f".{parts[-1]}.{os.getpid()}.tmp"
        try:
            out = os.open(
                temporary,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                0o644,
                dir_fd=fd,
            )
        except FileExistsError:
            os.unlink(temporary, dir_fd=fd)
            out = os.open(
                temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=fd
            )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
            os.fchmod(out, 0o644)
        finally:
            os.close(out)
        os.replace(temporary, parts[-1], src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)
