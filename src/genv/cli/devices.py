"""``genv devices``: the low-level device commands the integrations call."""

from __future__ import annotations

import argparse
import sys

from genv.cli import common
from genv.core import listing
from genv.domain import validate
from genv.domain.timefmt import timestamp

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from genv.domain.models import Attachment, Device
    from genv.store import State, Store

QUERY_FIELDS = ("index", "eids", "total_memory", "attachments")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    common.add_parent_arguments(
        parser, "Detach every environment you may change (all of them, as root)"
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION")

    attach = sub.add_parser("attach", help="Attach devices to an environment")
    eid = common.checked(validate.environment_id)
    index = common.checked(validate.device_index)
    attach.add_argument("--eid", required=True, type=eid, help="Environment identifier")
    attach.add_argument(
        "--allow-over-subscription",
        action="store_true",
        help="Use devices that other environments hold if needed",
    )
    which = attach.add_mutually_exclusive_group()
    which.add_argument(
        "--count",
        type=common.checked(validate.count),
        help="Total number of devices to be attached",
    )
    which.add_argument("--index", type=index, help="Index of the device to attach")

    detach = sub.add_parser("detach", help="Detach devices from an environment")
    detach.add_argument("--eid", required=True, type=eid, help="Environment identifier")
    detach.add_argument("--index", type=index, help="Index of the device to detach")
    detach.add_argument("--quiet", action="store_true", help="Print nothing")

    find = sub.add_parser("find", help="Print the devices attached to an environment")
    find.add_argument("--eid", required=True, type=eid, help="Environment identifier")

    ps = sub.add_parser("ps", help="Print the devices and their attachments")
    common.add_table_arguments(ps, defaults=False)

    query = sub.add_parser("query", help="Query devices")
    query.add_argument(
        "--query", "--queries", dest="queries", nargs="+", required=True, choices=QUERY_FIELDS
    )


def run(args: argparse.Namespace) -> int:
    store = common.open_store()
    if args.reset:
        from genv.core import devices as core

        core.reset(store)
    action = args.action or "ps"
    return ACTIONS[action](store, args)


def _print_indices(indices: list[int]) -> None:
    print(",".join(str(index) for index in indices))


def _attach(store: Store, args: argparse.Namespace) -> int:
    from genv.core import devices as core

    indices = core.attach(
        store,
        args.eid,
        count=args.count,
        index=args.index,
        over_subscribe=args.allow_over_subscription,
    )
    _print_indices(indices)
    return 0


def _detach(store: Store, args: argparse.Namespace) -> int:
    from genv.core import devices as core

    indices = core.detach(store, args.eid, args.index)
    if not args.quiet:
        _print_indices(indices)
    return 0


def _find(store: Store, args: argparse.Namespace) -> int:
    state = common.read_state(store)
    env = state.lookup(args.eid, prefer_uid=store.caller_uid)
    _print_indices([] if env is None else state.attached_indices(env))
    return 1 if common.own_problem(state, store.caller_uid) else 0


def _hardware_and_state(store: Store) -> tuple[list[Device], State]:
    from genv.backends import open_backend

    devices = list(open_backend().snapshot(processes=False).devices)
    state = common.read_state(store)
    present = {device.index for device in devices}
    for attachment in state.attachments:
        if attachment.device_index not in present:
            print(
                f"genv: warning: environment {attachment.eid} is attached to device "
                f"{attachment.device_index}, which this machine does not have now",
                file=sys.stderr,
            )
    return devices, state


def _rows(devices: list[Device], state: State) -> list[tuple[int, list[Attachment]]]:
    """One entry per device index seen in hardware or in attachments, in index order."""
    indices = sorted({d.index for d in devices} | {a.device_index for a in state.attachments})
    return [(index, sorted(state.attachments_on(index), key=lambda a: a.time)) for index in indices]


def _ps(store: Store, args: argparse.Namespace) -> int:
    devices, state = _hardware_and_state(store)
    names = {env.key: env.config.name for env in state.environments}
    rows = _rows(devices, state)
    if args.format == "json":
        by_index = {d.index: d for d in devices}
        listing.print_json(
            [
                {
                    "index": index,
                    "uuid": by_index[index].uuid if index in by_index else None,
                    "name": by_index[index].name if index in by_index else None,
                    "total_memory": by_index[index].total_memory if index in by_index else None,
                    "present": index in by_index,
                    "attachments": [
                        {
                            "eid": a.eid,
                            "uid": a.uid,
                            "env_name": names.get(a.env_key),
                            "gpu_memory": a.gpu_memory,
                            "time": a.time,
                            "over_subscribed": a.over_subscribed,
                        }
                        for a in attachments
                    ],
                }
                for index, attachments in rows
            ]
        )
        return 1 if common.own_problem(state, store.caller_uid) else 0
    table = []
    for index, attachments in rows:
        if not attachments:
            table.append((index, "", "", ""))
        for a in attachments:
            table.append((index, a.eid, names.get(a.env_key) or "", listing.when(a.time, args)))
    listing.print_table(args, ("ID", "ENV ID", "ENV NAME", "ATTACHED"), (8, 12, 16), table)
    return 1 if common.own_problem(state, store.caller_uid) else 0


def _query(store: Store, args: argparse.Namespace) -> int:
    devices, state = _hardware_and_state(store)
    by_index = {d.index: d for d in devices}
    for index, attachments in _rows(devices, state):
        device = by_index.get(index)
        values = {
            "index": str(index),
            "eids": " ".join(a.eid for a in attachments),
            "total_memory": f"{device.total_memory // 2**20}mi" if device else "",
            "attachments": " ".join(
                f"{a.eid}+{a.gpu_memory or ''}+{timestamp(a.time).replace(' ', '_')}"
                for a in attachments
            ),
        }
        print(",".join(values[name] for name in args.queries))
    return 1 if common.own_problem(state, store.caller_uid) else 0


ACTIONS = {"attach": _attach, "detach": _detach, "find": _find, "ps": _ps, "query": _query}
