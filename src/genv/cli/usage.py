"""``genv usage``: what ``genv remote`` runs on each host (as root, through ``sudo -n``).

- ``snapshot --format json [--type devices|envs|processes]``: this host as JSON;
- ``execute``: a plan on stdin, checked against a snapshot taken now;
- ``serve``: the long-lived agent of ``genv remote enforce`` (JSON lines on stdin/stdout);
  ``serve --usage``: the one of ``genv remote monitor`` and ``genv remote top``.
"""

from __future__ import annotations

import argparse
import sys

from genv.cli.enforce import MAX_GRACE, _seconds


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    snapshot = sub.add_parser("snapshot", help="Take a snapshot of GPU usage (JSON)")
    snapshot.add_argument("--format", choices=["json"], default="json", help="Output format")
    snapshot.add_argument(
        "--type", choices=["devices", "envs", "processes"], help="Only this part of the snapshot"
    )
    sub.add_parser("execute", help="Carry out the plan given on stdin (JSON)")
    serve = sub.add_parser("serve", help="Answer genv remote enforce on stdin/stdout")
    serve.add_argument(
        "--grace",
        type=_seconds("--grace", MAX_GRACE),
        default=10.0,
        help="seconds between SIGTERM and SIGKILL (default: 10)",
    )
    serve.add_argument("--dry-run", action="store_true", help="never act")
    serve.add_argument(
        "--usage",
        action="store_true",
        help="answer usage samples only, for genv remote monitor and top (never acts)",
    )


def run(args: argparse.Namespace) -> int:
    from genv.remote import agent, wire

    if args.action == "snapshot":
        kind = None if args.type == "processes" else args.type
        sys.stdout.buffer.write(wire.dumps(agent.snapshot_once(kind)))
        return 0
    if args.action == "execute":
        data = sys.stdin.buffer.read(wire.MAX_LINE + 1)
        try:
            plan = wire.loads(data)
        except wire.WireError as error:
            from genv.errors import UsageError

            raise UsageError(f"the plan on stdin is not a JSON object: {error}") from None
        return agent.execute_once(plan)
    import logging

    from genv.system import logs

    logs.settle()  # genv's own set-up first, then this level
    logging.getLogger("genv").setLevel(logging.ERROR)  # stderr goes back over SSH
    if args.usage:
        from genv.metrics.host_agent import UsageAgent

        return agent.serve(UsageAgent(), sys.stdin.buffer, sys.stdout.buffer)
    host = agent.HostAgent(grace=args.grace, dry_run=args.dry_run)
    return agent.serve(host, sys.stdin.buffer, sys.stdout.buffer)
