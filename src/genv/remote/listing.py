"""``genv remote devices|envs|query|activate``: what every host says, as one table.

Each host runs ``genv usage snapshot --type devices|envs --format json`` as the login user
(no sudo: these only read), all in parallel, and sharing one SSH connection per host with
later commands for a minute (ControlMaster), so ``genv remote activate`` and repeated
listings cost no new handshake.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from genv.core import listing as show
from genv.domain import validate
from genv.domain.models import Environment
from genv.domain.timefmt import timestamp
from genv.errors import GenvError
from genv.remote import wire
from genv.remote.channel import bounded, run_command
from genv.remote.hosts import Host
from genv.remote.ssh import HostError, SshOptions


@dataclass(frozen=True)
class Cluster:
    """The hosts and how to reach them, as the command line says."""

    hosts: tuple[Host, ...]
    ssh: SshOptions
    exit_on_error: bool = False
    quiet: bool = False
    parallel: int = 32


async def _fetch(cluster: Cluster, kind: str) -> list[tuple[Host, wire.Listing]]:
    remote = ["genv", "usage", "snapshot", "--type", kind, "--format", "json"]

    async def one(host: Host) -> wire.Listing:
        out = await run_command(host, cluster.ssh, remote)
        try:
            return wire.decode_listing(wire.loads(out.strip() or b"{}"))
        except wire.WireError as error:
            raise HostError(
                host,
                f"the genv there is too old or not this genv ({error}): install this genv on it",
                "old-genv",
            ) from None

    results = await bounded(list(cluster.hosts), one, cluster.parallel)
    answered = []
    for host, result in zip(cluster.hosts, results, strict=True):
        if isinstance(result, HostError):
            if cluster.exit_on_error:
                raise result
            if not cluster.quiet:
                print(f"genv: {result}", file=sys.stderr)
            continue
        if isinstance(result, BaseException):
            raise result
        for problem in result.problems:
            print(
                f"genv: warning: {host.name}: {validate.safe_text(problem, 400)}", file=sys.stderr
            )
        answered.append((host, result))
    return answered


def fetch(cluster: Cluster, kind: str) -> list[tuple[Host, wire.Listing]]:
    return asyncio.run(_fetch(cluster, kind))


def _summary(args: argparse.Namespace, line: str) -> None:
    if getattr(args, "summary", True):
        print(f"\n{line}")


def devices(cluster: Cluster, args: argparse.Namespace) -> int:
    answered = fetch(cluster, "devices")
    if args.format == "json":
        show.print_json(
            [
                {
                    "host": host.name,
                    "total": len(listing.devices),
                    "available": len(listing.available),
                    "devices": [
                        {
                            "index": d.index,
                            "uuid": d.uuid,
                            "name": d.name,
                            "total_memory": d.total_memory,
                            "available": d.index in listing.available,
                            "attachments": [
                                a.eid for a in listing.attachments if a.device_index == d.index
                            ],
                        }
                        for d in listing.devices
                    ],
                }
                for host, listing in answered
            ]
        )
        return _status(cluster, answered)
    rows = [(host.name, len(listing.devices), len(listing.available)) for host, listing in answered]
    show.print_table(args, ("HOST", "TOTAL", "AVAILABLE"), (25, 9), rows)
    total = sum(r[1] for r in rows)
    available = sum(r[2] for r in rows)
    _summary(args, f"Total {total} devices with {available} available on {len(rows)} hosts")
    return _status(cluster, answered)


def envs(cluster: Cluster, args: argparse.Namespace) -> int:
    answered = fetch(cluster, "envs")
    if args.format == "json":
        show.print_json(
            [
                {"host": host.name, **_env_json(env)}
                for host, listing in answered
                for env in listing.environments
            ]
        )
        return _status(cluster, answered)
    rows = [
        (
            host.name,
            env.eid,
            env.username or str(env.uid),
            env.config.name or "",
            show.when(env.creation, args),
        )
        for host, listing in answered
        for env in sorted(listing.environments, key=lambda e: e.creation)
    ]
    show.print_table(args, ("HOST", "ID", "USER", "NAME", "CREATED"), (25, 8, 16, 16), rows)
    _summary(args, f"Total {len(rows)} environments on {len(answered)} hosts")
    return _status(cluster, answered)


def _env_json(env: Environment) -> dict:
    return show.environment_json(env)


QUERIES = ("hostname", "eid", "creation", "uid", "username", "config.gpus")


def query(cluster: Cluster, args: argparse.Namespace) -> int:
    answered = fetch(cluster, "envs")
    for host, listing in answered:
        for env in listing.environments:
            if env.config.name != args.name:
                continue
            values = {
                "hostname": host.name,
                "eid": env.eid,
                "creation": timestamp(env.creation),
                "uid": str(env.uid),
                "username": env.username or "",
                "config.gpus": "" if env.config.gpus is None else str(env.config.gpus),
            }
            print(
                ",".join(validate.safe_text(values[q]).replace(",", "\\x2c") for q in args.queries)
            )
    return _status(cluster, answered)


def _status(cluster: Cluster, answered: Sequence[object]) -> int:
    return 0 if answered or not cluster.hosts else 1


# -- activate ------------------------------------------------------------------------------


def choose_host(answered: Sequence[tuple[Host, wire.Listing]], gpus: int | None) -> Host:
    """The host where ``gpus`` devices are free with the fewest left over (the tightest fit,
    so that larger requests still find room elsewhere); the first that answered when no
    count is asked."""
    if gpus is None:
        if not answered:
            raise GenvError("no host answered; nowhere to activate an environment")
        return answered[0][0]
    fitting = [
        (len(listing.available), order, host)
        for order, (host, listing) in enumerate(answered)
        if len(listing.available) >= gpus
    ]
    if not fitting:
        free = ", ".join(f"{h.name}: {len(listing.available)}" for h, listing in answered)
        raise GenvError(
            f"no host has {gpus} free devices (free now: {free or 'no host answered'}); "
            "ask for fewer, or try again later"
        )
    return min(fitting, key=lambda item: (item[0], item[1]))[2]


def activate(cluster: Cluster, args: argparse.Namespace) -> NoReturn:
    answered = fetch(cluster, "devices")
    host = choose_host(answered, args.gpus)
    variables = {"GENV_PREACTIVATE": "1", "GENV_PREACTIVATE_PROMPT": "1" if args.prompt else "0"}
    if args.gpus is not None:
        variables["GENV_PREACTIVATE_GPUS"] = str(args.gpus)
    if args.name:
        variables["GENV_PREACTIVATE_ENVIRONMENT_NAME"] = args.name
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in variables.items())
    # The login shell of the host, interactive, with genv's shell integration in its rc
    # files: it sees GENV_PREACTIVATE and activates (as IDE terminals do).
    remote = f'exec env {assignments} "${{SHELL:-/bin/sh}}" -l'
    argv = cluster.ssh.command(host, [], tty=True)[:-1] + [remote]
    if not cluster.quiet:
        print(f"genv: activating on {host.name}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as error:
        raise GenvError(f"cannot run ssh: {error.strerror}") from None
