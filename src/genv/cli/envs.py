"""``genv envs``: the low-level environment commands the IDE and Jupyter integrations call."""

from __future__ import annotations

import argparse

from genv.cli import common
from genv.core import environments, listing
from genv.domain import validate
from genv.domain.models import Environment
from genv.domain.timefmt import timestamp
from genv.store import Store

QUERIES = {
    "eid": lambda env: env.eid,
    "creation": lambda env: timestamp(env.creation),
    "uid": lambda env: env.uid,
    "username": lambda env: env.username,
    "config.name": lambda env: env.config.name,
    "config.gpus": lambda env: env.config.gpus,
    "config.gpu_memory": lambda env: env.config.gpu_memory,
    "pids": lambda env: " ".join(str(pid) for pid in env.pids),
    "kernel_ids": lambda env: " ".join(env.kernel_ids),
}


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    common.add_parent_arguments(
        parser, "End every environment you may change (all of them, as root)"
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    eid = common.checked(validate.environment_id)

    activate = sub.add_parser("activate", help="Register a process or a Jupyter kernel")
    activate.add_argument("--eid", required=True, type=eid, help="Environment identifier")
    activate.add_argument(
        "--uid", required=True, type=common.checked(validate.uid), help="User identifier"
    )
    activate.add_argument("--username", type=common.checked(validate.username), help="User name")
    who = activate.add_mutually_exclusive_group(required=True)
    who.add_argument("--pid", type=common.checked(validate.pid), help="Process identifier")
    who.add_argument(
        "--kernel-id", type=common.checked(validate.kernel_id), help="Jupyter kernel identifier"
    )

    config = sub.add_parser("config", help="Configure an environment")
    config.add_argument("--eid", required=True, type=eid, help="Environment identifier")
    fields = config.add_subparsers(dest="field", metavar="FIELD", required=True)
    for field, flag, check, help_text in (
        ("gpus", "--count", validate.count, "Device count"),
        ("name", "--name", validate.environment_name, "Environment name"),
        ("gpu-memory", "--gpu-memory", validate.memory_amount, "GPU memory capacity (e.g. 4g)"),
    ):
        parser_ = fields.add_parser(field, help=help_text)
        value = parser_.add_mutually_exclusive_group(required=True)
        value.add_argument(flag, dest="value", type=common.checked(check))
        value.add_argument("--clear", action="store_true")

    deactivate = sub.add_parser("deactivate", help="Unregister a process or a Jupyter kernel")
    who = deactivate.add_mutually_exclusive_group(required=True)
    who.add_argument("--pid", type=common.checked(validate.pid), help="Process identifier")
    who.add_argument(
        "--kernel-id", type=common.checked(validate.kernel_id), help="Jupyter kernel identifier"
    )

    find = sub.add_parser("find", help="Find the environment of a process or a Jupyter kernel")
    who = find.add_mutually_exclusive_group(required=True)
    who.add_argument("--pid", type=common.checked(validate.pid), help="Process identifier")
    who.add_argument(
        "--kernel-id", type=common.checked(validate.kernel_id), help="Jupyter kernel identifier"
    )

    ps = sub.add_parser("ps", help="Print the active environments")
    common.add_table_arguments(ps, defaults=False)

    query = sub.add_parser("query", help="Query environments")
    query.add_argument("--eid", type=eid, help="Environment identifier")
    query.add_argument(
        "--query", "--queries", dest="queries", nargs="+", required=True, choices=list(QUERIES)
    )


def run(args: argparse.Namespace) -> int:
    store = common.open_store()
    if args.reset:
        environments.reset(store)
    action = args.action or "ps"
    return ACTIONS[action](store, args)


def _activate(store: Store, args: argparse.Namespace) -> int:
    environments.register(
        store, args.eid, args.uid, pid=args.pid, kernel_id=args.kernel_id, username=args.username
    )
    return 0


def _config(store: Store, args: argparse.Namespace) -> int:
    key = args.field.replace("-", "_")
    environments.configure(store, args.eid, **{key: None if args.clear else args.value})
    return 0


def _deactivate(store: Store, args: argparse.Namespace) -> int:
    environments.unregister(store, pid=args.pid, kernel_id=args.kernel_id)
    return 0


def _find(store: Store, args: argparse.Namespace) -> int:
    state = common.read_state(store)
    for env in environments.find_registered(state, args.pid, args.kernel_id):
        print(env.eid)
    return 1 if common.own_problem(state, store.caller_uid) else 0


def _ps(store: Store, args: argparse.Namespace) -> int:
    state = common.read_state(store)
    envs = sorted(state.environments, key=lambda env: env.creation)
    if args.format == "json":
        listing.print_json([listing.environment_json(env) for env in envs])
    else:
        header = ("ID", "USER", "NAME", "CREATED", "PID(S)")
        listing.print_table(
            args,
            header,
            (8, 16, 16, 21),
            (
                (
                    env.eid,
                    _user(env),
                    env.config.name or "",
                    listing.when(env.creation, args),
                    " ".join(str(pid) for pid in env.pids),
                )
                for env in envs
            ),
        )
    return 1 if common.own_problem(state, store.caller_uid) else 0


def _user(env: Environment) -> str:
    return f"{env.username}({env.uid})" if env.username else str(env.uid)


def _query(store: Store, args: argparse.Namespace) -> int:
    state = common.read_state(store)
    envs = sorted(state.environments, key=lambda env: env.creation)
    if args.eid is not None:
        env = state.lookup(args.eid, prefer_uid=store.caller_uid)
        envs = [] if env is None else [env]
    for env in envs:
        values = (QUERIES[name](env) for name in args.queries)
        print(",".join("" if value is None else str(value) for value in values))
    return 1 if common.own_problem(state, store.caller_uid) else 0


ACTIONS = {
    "activate": _activate,
    "config": _config,
    "deactivate": _deactivate,
    "find": _find,
    "ps": _ps,
    "query": _query,
}
