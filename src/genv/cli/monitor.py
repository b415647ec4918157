"""``genv monitor``: a Prometheus exporter of this machine's usage, and the files for Prometheus
and Grafana (genv 1.4.3's command, flags and metric names)."""

from __future__ import annotations

import argparse
import signal
from typing import TYPE_CHECKING

from genv.cli.common import checked
from genv.domain import validate
from genv.system import logs

if TYPE_CHECKING:
    from genv.metrics.exporter import Exporter
    from genv.metrics.source import Source

log = logs.logger("genv.metrics")


def _port(text: str) -> int:
    if not validate.decimal(text.strip()) or not 0 < int(text) < 65536:
        raise validate.InvalidValue(f"{validate.safe_text(text, 20)!r} is not a port (1-65535)")
    return int(text)


def _listen(text: str) -> str:
    from genv.metrics.server import parse_listen

    try:
        address, port = parse_listen(text)
    except ValueError as error:
        raise validate.InvalidValue(str(error)) from None
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _count(text: str) -> int:
    value = validate.count(text, "--max-process-series", 10**7)
    return value


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--config-dir",
        metavar="DIR",
        help="folder for the Prometheus and Grafana files (default: /var/lib/genv/monitor "
        "as root, ~/.local/state/genv/monitor otherwise)",
    )
    parser.add_argument(
        "-p",
        "--port",
        type=checked(_port),
        default=8000,
        help="port of the exporter (default: 8000)",
    )
    parser.add_argument(
        "-i",
        "--interval",
        type=checked(validate.refresh_interval),
        default=10.0,
        metavar="SECONDS",
        help="seconds between collections (default: 10)",
    )
    parser.add_argument(
        "--address",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1; the metrics name users and "
        "processes, so think before exposing them)",
    )
    parser.add_argument(
        "--max-process-series",
        type=checked(_count),
        default=1000,
        metavar="N",
        help="per-process metrics (a series per pid) only while the machine has at most N "
        "GPU processes (default: 1000; 0: never)",
    )
    parser.add_argument(
        "--enforcer",
        type=checked(_listen),
        nargs="+",
        default=[],
        metavar="[ADDRESS:]PORT",
        help="genv enforce --metrics-port endpoints for Prometheus to scrape too",
    )
    parser.add_argument(
        "--prometheus-url",
        default="http://127.0.0.1:9090",
        metavar="URL",
        help="where Grafana finds Prometheus (default: http://127.0.0.1:9090)",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="level of the diagnostics on stderr",
    )


def run(args: argparse.Namespace) -> int:
    from genv.cli.common import log_as_daemon
    from genv.metrics.local import LocalSource

    log_as_daemon("genv monitor", args.log_level)
    return serve(args, LocalSource())


def serve(args: argparse.Namespace, source: Source, exporter: Exporter | None = None) -> int:
    """Export ``source`` (this machine, or a cluster: genv remote monitor) until SIGTERM."""
    from pathlib import Path

    from genv.metrics.config_files import default_config_dir, write_config
    from genv.metrics.exporter import Exporter
    from genv.metrics.server import MetricsServer

    exporter = exporter or Exporter(source, args.max_process_series)
    server = None
    try:
        exporter.collect_once(strict=True)
        server = MetricsServer(args.address, args.port, exporter.page)
        target = (
            f"[{args.address}]:{server.port}"
            if ":" in args.address
            else (f"{args.address}:{server.port}")
        )
        folder = Path(args.config_dir) if args.config_dir else default_config_dir()
        write_config(folder, [target], args.enforcer, args.prometheus_url)
        server.start()
        signal.signal(signal.SIGTERM, exporter.stop)
        signal.signal(signal.SIGINT, exporter.stop)
        log.info(
            "serving %s every %gs; Prometheus and Grafana files in %s",
            server.url,
            args.interval,
            folder,
        )
        exporter.run(args.interval)
    finally:
        if server is not None:
            server.close()
        source.close()
    log.info("stopped")
    return 0
