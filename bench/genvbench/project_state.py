"""Writes the project's state for a layout, through the project's own store (``genv.store``).

Run with the project's interpreter: ``python project_state.py STATE_DIR < layout.json``, the
layout a JSON list of ``{"eid", "uid", "username", "pid", "device", "capacity"}``. As root,
each user's state file ends up owned by that user, as if the user had written it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from genv.backends.fake import default_uuid
from genv.store import Store


def main() -> None:
    envs = json.load(sys.stdin)
    store = Store(root=Path(sys.argv[1]), caller_uid=0)
    by_user: dict[int, list[dict]] = {}
    for env in envs:
        by_user.setdefault(env["uid"], []).append(env)
    try:
        for uid, theirs in by_user.items():  # each user's records in their own file
            with store.transaction(uid=uid) as tx:
                for env in theirs:
                    tx.activate(env["eid"], pid=env["pid"], username=env["username"])
                    tx.configure(env["eid"], gpu_memory=env["capacity"])
                    tx.attach(env["eid"], env["device"], over_subscribed=True,
                              uuid=default_uuid(env["device"]))
    finally:
        store.close()


if __name__ == "__main__":
    main()
