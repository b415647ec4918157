"""README's first command: `genv demo` plays the quick start with the product's very lines."""

from __future__ import annotations

import getpass
import re
import subprocess
import sys


def test_demo_plays_the_quick_start_with_the_product_lines():
    result = subprocess.run(
        [sys.executable, "-m", "genv", "demo"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = result.stdout
    user = getpass.getuser()

    stray = re.search(r"\[1\] (\d+)\n\$ genv enforce --interval 0 --non-env-processes\n", out)
    assert stray, out
    pid = stray.group(1)
    assert (
        f"Process {pid} is not running in a GPU environment\n"
        f"Terminating process {pid} from environment N/A that is running on GPU(s) 0\n"
        "[1]+  Terminated              ./quickstart\n"
    ) in out

    env = re.search(r"\n0       (\d+) +\d+ seconds? ago\n1\n", out)
    assert env, out
    eid = env.group(1)
    job = re.search(r"\[1\] (\d+)\n\$ genv enforce --interval 0 --max-devices-per-user 1\n", out)
    assert job, out
    pid = job.group(1)
    assert (
        "$ genv enforce --interval 0 --max-devices-per-user 1\n"
        "$ genv enforce --interval 0 --max-devices-per-user 0\n"
        f"User {user} is using 1 devices which is 1 more than the maximum allowed\n"
        f"Terminating process {pid} from environment {eid} that is running on GPU(s) 0\n"
        f"Detaching environment {eid} of user {user} from device 0\n"
        "[1]+  Terminated              ./quickstart\n"
        "$ genv devices\n"
        "ID      ENV ID      ENV NAME        ATTACHED\n"
        "0\n"
        "1\n"
    ) in out
