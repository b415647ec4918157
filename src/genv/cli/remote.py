"""``genv remote (-H HOSTS | --hostfile FILE) [-l USER] [-t TIMEOUT] [-e] [-q] COMMAND``."""

from __future__ import annotations

import argparse
import os
import sys

from genv.cli import common
from genv.cli.main import OneLineParser
from genv.domain import validate
from genv.system import logs

log = logs.logger("genv.remote")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("give between 0 and 3600 seconds")
    return value


def _parallel(text: str) -> int:
    if not validate.decimal(text) or not 1 <= int(text) <= 1024:
        raise argparse.ArgumentTypeError("give a number of connections from 1 to 1024")
    return int(text)


def _ssh_option(text: str) -> str:
    from genv.remote.ssh import check_option

    try:
        return check_option(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "-H",
        "-host",
        "--host",
        dest="hostnames",
        metavar="HOSTS",
        help="comma-separated hosts: names, addresses or SSH aliases ([user@]host)",
    )
    where.add_argument(
        "-hostfile", "--hostfile", metavar="FILE", help="a file with one host per line (# comments)"
    )
    parser.add_argument("-l", "--username", metavar="USER", help="SSH login name")
    parser.add_argument(
        "-t",
        "--timeout",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="bound on connecting and on each answer of a host (default: 10)",
    )
    parser.add_argument(
        "-e",
        "--exit-on-error",
        dest="exit_on_error",
        action="store_true",
        help="stop on the first host that fails",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="do not show host errors")
    parser.add_argument(
        "-F",
        dest="ssh_config",
        metavar="FILE",
        help="the SSH configuration file to use (as ssh -F)",
    )
    parser.add_argument(
        "-o",
        dest="ssh_options",
        action="append",
        default=[],
        type=_ssh_option,
        metavar="OPTION",
        help="an SSH option (as ssh -o)",
    )
    parser.add_argument(
        "--parallel",
        type=_parallel,
        default=32,
        metavar="N",
        help="connections set up at once (default: 32)",
    )
    sub = parser.add_subparsers(
        dest="remote_command", metavar="COMMAND", required=True, parser_class=OneLineParser
    )

    activate = sub.add_parser("activate", help="Activate an environment on a host with room")
    activate.add_argument("--name", type=common.checked(_name), help="Environment name")
    activate.add_argument("--gpus", type=common.checked(_count), help="Device count")
    activate.add_argument(
        "--no-prompt", dest="prompt", action="store_false", help="Do not change the shell prompt"
    )

    for name, help_text in (
        ("devices", "Devices of every host"),
        ("envs", "Environments of every host"),
    ):
        listing = sub.add_parser(name, help=help_text)
        listing.add_argument(
            "--no-header", dest="header", action="store_false", help="Do not print column headers"
        )
        listing.add_argument(
            "--no-summary", dest="summary", action="store_false", help="Do not print the summary"
        )
        listing.add_argument(
            "--format",
            choices=["csv", "tui", "json"],
            default="tui",
            help="Output format (default: tui)",
        )
        if name == "envs":
            listing.add_argument(
                "--timestamp",
                action="store_true",
                help="Print the stored time instead of how long ago",
            )

    from genv.remote.listing import QUERIES

    query = sub.add_parser("query", help="Find environments by name on every host")
    query.add_argument("--name", required=True, help="Environment name")
    query.add_argument(
        "--query",
        "--queries",
        dest="queries",
        nargs="+",
        choices=QUERIES,
        default=["hostname", "eid"],
        help="What to print (default: hostname eid)",
    )

    from genv.cli import enforce as local_enforce

    enforce = sub.add_parser(
        "enforce",
        help="Enforce GPU usage on every host; per-user "
        "limits count a user's use on all hosts together",
    )
    local_enforce.add_arguments(enforce, "enforce")

    from genv.cli import monitor as local_monitor
    from genv.cli import top as local_top

    monitor = sub.add_parser(
        "monitor",
        help="One Prometheus exporter for every host: genv monitor's metrics, each with "
        "a hostname label, and genv_host_up",
    )
    local_monitor.add_arguments(monitor, "monitor")
    _sudo(monitor, True)
    top = sub.add_parser("top", help="genv top for every host")
    local_top.add_arguments(top, "top")
    _sudo(top, False)


def _sudo(parser: argparse.ArgumentParser, default: bool) -> None:
    parser.add_argument(
        "--sudo",
        action=argparse.BooleanOptionalAction,
        default=default,
        help="read each host as root through sudo -n, as genv remote enforce does (then the "
        "environment of every user's process is known; without, other users' processes "
        f"show as unknown); default: {'on' if default else 'off'}",
    )


def _name(text: str) -> str:
    from genv.domain import validate

    return validate.environment_name(text)


def _count(text: str) -> int:
    from genv.domain import validate

    return validate.count(text)


def run(args: argparse.Namespace) -> int:
    from genv.remote import listing
    from genv.remote.hosts import parse_hosts
    from genv.remote.ssh import DEFAULT_TIMEOUT, SshOptions, control_dir

    hosts = parse_hosts(args.hostnames, args.hostfile, args.username)
    if args.ssh_config is not None and not os.path.isfile(args.ssh_config):
        from genv.errors import UsageError

        raise UsageError(f"-F {args.ssh_config}: no such file")
    ssh = SshOptions(
        timeout=args.timeout or DEFAULT_TIMEOUT,
        config_file=args.ssh_config,
        options=tuple(args.ssh_options),
        control_dir=control_dir() if args.remote_command not in LONG_LIVED else None,
    )
    cluster = listing.Cluster(tuple(hosts), ssh, args.exit_on_error, args.quiet, args.parallel)
    if args.remote_command == "devices":
        return listing.devices(cluster, args)
    if args.remote_command == "envs":
        return listing.envs(cluster, args)
    if args.remote_command == "query":
        return listing.query(cluster, args)
    if args.remote_command == "activate":
        listing.activate(cluster, args)
    if args.remote_command == "monitor":
        return _monitor(cluster, args)
    if args.remote_command == "top":
        return _top(cluster, args)
    return _enforce(cluster, args)


# Commands that keep one session per host open (the agents): no shared connections.
LONG_LIVED = ("enforce", "monitor", "top")


def _failed(error: object) -> int:
    print(f"genv: {error}", file=sys.stderr)
    return 1


def _monitor(cluster, args: argparse.Namespace) -> int:  # noqa: ANN001 - listing.Cluster
    from genv.cli import monitor as local_monitor
    from genv.cli.common import log_as_daemon
    from genv.metrics.cluster import ClusterSource
    from genv.metrics.exporter import Exporter

    log_as_daemon("genv remote monitor", args.log_level)
    source = ClusterSource(
        cluster.hosts,
        cluster.ssh,
        args.interval,
        sudo=args.sudo,
        quiet=cluster.quiet,
        exit_on_error=cluster.exit_on_error,
        parallel=cluster.parallel,
    )
    exporter = Exporter(source, args.max_process_series)
    source.on_failure = lambda error: exporter.stop()
    source.start()
    if source.failed is not None:
        source.close()
        return _failed(source.failed)
    code = local_monitor.serve(args, source, exporter)
    return _failed(source.failed) if source.failed is not None else code


def _top(cluster, args: argparse.Namespace) -> int:  # noqa: ANN001 - listing.Cluster
    from genv.cli import top as local_top
    from genv.metrics.cluster import ClusterSource
    from genv.top.app import Top

    source = ClusterSource(
        cluster.hosts,
        cluster.ssh,
        args.interval,
        sudo=args.sudo,
        report=False,  # each host's state is on the screen
        exit_on_error=cluster.exit_on_error,
        parallel=cluster.parallel,
    )
    top = Top(source, args.interval)

    def stop(error: object) -> None:
        top.done = True

    source.on_failure = stop
    source.start()
    if source.failed is not None:
        source.close()
        return _failed(source.failed)
    code = local_top.show(args, source, top)
    return _failed(source.failed) if source.failed is not None else code


def _programs(names: list[str]) -> frozenset[str]:
    from genv.errors import UsageError

    for name in names:
        if not os.path.isabs(name):
            raise UsageError(
                f"--exempt-process {name}: give the program's full path on the hosts "
                "(e.g. /usr/lib/xorg/Xorg): processes are matched by what they run"
            )
    return frozenset(os.path.normpath(name) for name in names)


def _enforce(cluster, args: argparse.Namespace) -> int:  # noqa: ANN001 - listing.Cluster
    import asyncio

    from genv.cli.common import log_as_daemon
    from genv.enforce.cluster import ClusterRules
    from genv.remote.enforcer import ClusterEnforcer
    from genv.remote.report import ClusterReporter

    log_as_daemon("genv remote enforce", args.log_level)
    rules = ClusterRules(
        non_env_processes=args.non_env_processes,
        env_devices=args.env_devices,
        env_memory=args.env_memory,
        max_devices_per_user=args.max_devices_per_user,
        max_devices_for_user=dict(args.max_devices_for_user),
        max_memory_per_user=args.max_memory_per_user,
        max_memory_for_user=dict(args.max_memory_for_user),
        exempt_users=frozenset(args.exempt_user),
        exempt_programs=_programs(args.exempt_process),
    )
    enforcer = ClusterEnforcer(
        cluster.hosts,
        cluster.ssh,
        rules,
        ClusterReporter(json_lines=args.log_format == "json", dry_run=args.dry_run),
        grace=args.grace,
        dry_run=args.dry_run,
        exit_on_error=cluster.exit_on_error,
        quiet=cluster.quiet,
        parallel=cluster.parallel,
    )

    metrics_server = None
    if args.metrics_port is not None:
        from genv.errors import UsageError
        from genv.metrics.enforcement import EnforcementMetrics

        if args.interval == 0:
            raise UsageError("--metrics-port serves a running daemon: give an --interval above 0")
        metrics = EnforcementMetrics(dry_run=args.dry_run)
        metrics_server = metrics.serve(*args.metrics_port)
        enforcer.add_reporter(metrics)  # beside the reporter: every event and cycle
        log.info("serving metrics on %s", metrics_server.url)

    async def main() -> int:
        if args.interval == 0:
            return await enforcer.run_once()
        log.info("enforcing %d hosts every %gs", len(cluster.hosts), args.interval)
        code = await enforcer.run_forever(args.interval)
        log.info("stopped")
        return code

    try:
        code = asyncio.run(main())
    finally:
        if metrics_server is not None:
            metrics_server.close()
    if enforcer.failed is not None:
        print(f"genv: {enforcer.failed}", file=sys.stderr)
    return code
