"""``genv envs``: the low-level environment commands the IDE and Jupyter integrations call."""

from __future__ import annotations

import argparse

from genv.cli import common
from genv.domain.memory import parse_memory
from genv.domain.models import Environment
from genv.store import NotFound, Store

QUERIES = {
    "eid": lambda env: env.eid,
    "creation": lambda env: common.timestamp(env.creation),
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
        parser, "Remove every environment you may change (all of them, as root)"
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION")

    activate = sub.add_parser("activate", help="Register a process or a Jupyter kernel")
    activate.add_argument("--eid", required=True, help="Environment identifier")
    activate.add_argument("--uid", required=True, type=int, help="User identifier")
    activate.add_argument("--username", help="User name")
    who = activate.add_mutually_exclusive_group(required=True)
    who.add_argument("--pid", type=int, help="Process identifier")
    who.add_argument("--kernel-id", help="Jupyter kernel identifier")

    config = sub.add_parser("config", help="Configure an environment")
    config.add_argument("--eid", required=True, help="Environment identifier")
    fields = config.add_subparsers(dest="field", metavar="FIELD", required=True)
    gpus = fields.add_parser("gpus", help="Device count")
    gpus.add_argument("--count", type=int)
    gpus.add_argument("--clear", action="store_true")
    name = fields.add_parser("name", help="Environment name")
    name.add_argument("--name")
    name.add_argument("--clear", action="store_true")
    memory = fields.add_parser("gpu-memory", help="GPU memory capacity (e.g. 4g)")
    memory.add_argument("--gpu-memory")
    memory.add_argument("--clear", action="store_true")

    deactivate = sub.add_parser("deactivate", help="Unregister a process or a Jupyter kernel")
    who = deactivate.add_mutually_exclusive_group(required=True)
    who.add_argument("--pid", type=int, help="Process identifier")
    who.add_argument("--kernel-id", help="Jupyter kernel identifier")

    find = sub.add_parser("find", help="Find the environment of a process or a Jupyter kernel")
    who = find.add_mutually_exclusive_group(required=True)
    who.add_argument("--pid", type=int, help="Process identifier")
    who.add_argument("--kernel-id", help="Jupyter kernel identifier")

    ps = sub.add_parser("ps", help="Print the active environments")
    common.add_table_arguments(ps, defaults=False)

    query = sub.add_parser("query", help="Query environments")
    query.add_argument("--eid", help="Environment identifier")
    query.add_argument("--query", "--queries", dest="queries", nargs="+", required=True,
                       choices=list(QUERIES))


def run(args: argparse.Namespace) -> int:
    store = common.open_store()
    if args.reset:
        _reset(store)
    action = args.action or "ps"
    return ACTIONS[action](store, args)


def _reset(store: Store) -> None:
    with store.transaction() as tx:
        for env in tx.view().environments:
            if tx.is_root or env.uid == tx.caller_uid:
                tx.detach(env.eid, uid=env.uid)
                for pid in env.pids:
                    tx.deactivate(pid=pid)
                for kernel in env.kernel_ids:
                    tx.deactivate(kernel_id=kernel)


def _activate(store: Store, args: argparse.Namespace) -> int:
    with store.transaction() as tx:
        tx.activate(args.eid, args.uid, args.username, pid=args.pid, kernel_id=args.kernel_id)
    return 0


def _config(store: Store, args: argparse.Namespace) -> int:
    if args.field == "gpus":
        value = None if args.clear else args.count
        if value is not None and value < 0:
            raise NotFound("the device count cannot be negative")
        change = {"gpus": value}
    elif args.field == "name":
        change = {"name": None if args.clear else args.name}
    else:
        value = None if args.clear else args.gpu_memory
        if value is not None:
            parse_memory(value)
        change = {"gpu_memory": value}
    with store.transaction() as tx:
        tx.configure(args.eid, **change)
    return 0


def _deactivate(store: Store, args: argparse.Namespace) -> int:
    with store.transaction() as tx:
        tx.deactivate(pid=args.pid, kernel_id=args.kernel_id)
    return 0


def _find(store: Store, args: argparse.Namespace) -> int:
    state = common.read_state(store)
    if args.pid is not None:
        found = state.find_by_pid(args.pid)
    else:
        found = state.find_by_kernel(args.kernel_id)
    for env in found:
        print(env.eid)
    return 1 if common.own_problem(state, store.caller_uid) else 0


def _ps(store: Store, args: argparse.Namespace) -> int:
    state = common.read_state(store)
    envs = sorted(state.environments, key=lambda env: env.creation)
    if args.format == "json":
        common.print_json([_as_json(env) for env in envs])
    else:
        header = ("ID", "USER", "NAME", "CREATED", "PID(S)")
        common.print_table(args, header, (8, 16, 16, 21), (
            (env.eid, _user(env), env.config.name or "", common.when(env.creation, args),
             " ".join(str(pid) for pid in env.pids))
            for env in envs
        ))
    return 1 if common.own_problem(state, store.caller_uid) else 0


def _user(env: Environment) -> str:
    return f"{env.username}({env.uid})" if env.username else str(env.uid)


def _as_json(env: Environment) -> dict:
    return {
        "eid": env.eid,
        "uid": env.uid,
        "username": env.username,
        "creation": env.creation,
        "config": {"name": env.config.name, "gpus": env.config.gpus,
                   "gpu_memory": env.config.gpu_memory},
        "pids": list(env.pids),
        "kernel_ids": list(env.kernel_ids),
    }


def _query(store: Store, args: argparse.Namespace) -> int:
    state = common.read_state(store)
    envs = sorted(state.environments, key=lambda env: env.creation)
    if args.eid is not None:
        env = state.environment(args.eid, prefer_uid=store.caller_uid)
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
