"""``genv shell --nvidia-smi ARGS``: what the shim (``genv/shims/nvidia-smi``) runs inside an
environment. Devices and processes come from genv's backend, so it works wherever genv does
(NVML, nvidia-smi, a simulated machine). It draws the plain table and answers ``-L`` and the
CSV query forms itself; any other arguments go to the real nvidia-smi unchanged."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from genv.core import session
from genv.smi import passthrough, render
from genv.smi.request import parse
from genv.smi.view import environment_view


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    eid = session.current_eid()
    if eid is None or os.environ.get(session.BYPASS) == "1":
        return passthrough.passthrough(argv)
    request = parse(argv)
    if request is None:
        return passthrough.passthrough(argv)
    view = environment_view(eid)
    if request.ids is not None:
        view = view.only(set(request.ids))
    if request.query_gpu is not None or request.query_apps is not None:
        answered = render.query(view, request)
        if answered is not None:
            return answered
        gpu = request.query_gpu is not None
        fields = (request.query_gpu if gpu else request.query_apps) or []
        known = render.GPU_FIELDS if gpu else render.APP_FIELDS
        unknown = [name for name in fields if name not in known]
        return passthrough.filtered_real(view, gpu, fields, ",".join(request.format), unknown)
    if not view.devices:
        print(render.NO_DEVICES)
        return render.NO_DEVICES_EXIT
    if request.list_gpus:
        for device in view.devices:
            print(f"GPU {device.index}: {device.name} (UUID: {device.uuid})")
        return 0
    sys.stdout.write(render.table(view))
    return 0
