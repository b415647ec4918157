"""Handing over to the real nvidia-smi: with the arguments unchanged, or to answer fields the
shim cannot compute, keeping only the environment's rows."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from genv.core import session
from genv.smi.render import NO_DEVICES, NO_DEVICES_EXIT
from genv.smi.view import View


def filtered_real(view: View, gpu: bool, fields: list[str], fmt: str, unknown: list[str]) -> int:
    """Fields the shim cannot compute: ask the real nvidia-smi, keep the environment's rows.

    The query is widened with the device UUID (and the pid for processes) in front, which
    decide what is kept and are then cut off again.
    """
    real = find_real()
    if real is None:
        print(
            f"nvidia-smi: genv's shim cannot show {', '.join(unknown)} and no real "
            "nvidia-smi is on PATH",
            file=sys.stderr,
        )
        return 2
    keys = ["uuid"] if gpu else ["gpu_uuid", "pid"]
    option = "--query-gpu=" if gpu else "--query-compute-apps="
    result = subprocess.run(
        [real, option + ",".join(keys + fields), f"--format={fmt}"],
        capture_output=True,
        text=True,
        env=_bypass_env(),
        check=False,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stderr or result.stdout)
        return result.returncode
    uuids = {d.uuid for d in view.devices}
    pids = {str(p.pid) for p in view.processes}
    lines = result.stdout.splitlines()
    header = "noheader" not in fmt.split(",")
    out = []
    for number, line in enumerate(lines):
        parts = line.split(", ", len(keys))
        if len(parts) <= len(keys):
            continue
        is_header = header and number == 0
        if is_header or (parts[0].strip() in uuids and (gpu or parts[1].strip() in pids)):
            out.append(parts[-1])
    if gpu and not uuids:
        print(NO_DEVICES)
        return NO_DEVICES_EXIT
    if out:
        print("\n".join(out))
    return 0


def find_real() -> str | None:
    """The first nvidia-smi on PATH that is not a genv shim."""
    shim = os.path.join(session.shims_dir(), "nvidia-smi")
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(folder or ".", "nvidia-smi")
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        try:
            if os.path.samefile(candidate, shim):
                continue
        except OSError:
            continue
        return candidate
    return None


def _bypass_env() -> dict[str, str]:
    return {**os.environ, session.BYPASS: "1"}


def passthrough(argv: Sequence[str]) -> int:
    """Run the real nvidia-smi with the arguments unchanged (this process becomes it)."""
    real = find_real()
    if real is None:
        print(
            "nvidia-smi: genv's shim passes these arguments to the real nvidia-smi, "
            "but there is none on PATH",
            file=sys.stderr,
        )
        return 127
    sys.stdout.flush()
    os.execve(real, [real, *argv], _bypass_env())
    return 0  # not reached
