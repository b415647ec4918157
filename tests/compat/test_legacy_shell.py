"""genv 1.4.3's own shell function, still loaded in a terminal opened before the switch, keeps
working with this project: its hidden flags, its shell code, its variables.

The terminal is a real interactive bash that ran 1.4.3's ``genv shell --init``; the ``genv``
on its PATH is 1.4.3's, then (as after ``pip install``) this project's.
"""

from __future__ import annotations

from typing import Any

from shellkit import PROMPT, attached

INIT = 'eval "$(genv shell --init)"'


def test_an_environment_of_143_goes_on_in_its_terminal(
    bash: Any, switch: Any, peer_env: dict[str, str], fake_machine: Any
) -> None:
    fake_machine.set_devices(2)
    sh = bash()
    sh.ok(INIT)  # genv 1.4.3's function
    assert "_genv_set_env" in sh.ok("type _genv_set_env")
    path_before = sh.value("PATH")
    sh.ok("genv activate --gpus 1 --name old")
    assert sh.value("CUDA_VISIBLE_DEVICES") == "0"
    eid = sh.value("GENV_ENVIRONMENT_ID")
    assert eid == str(sh.pid)

    switch.switch()  # pip install of this project, under the open terminal
    status = sh.ok("genv status")  # as root: takes 1.4.3's state over first
    assert status.splitlines()[0] == f"genv: took over genv 1.4.3's state: 1 environments of " \
        "1 users (1 processes, 0 kernels, 1 attachments), 0 ended ones dropped, 0 refused, " \
        f"in {status.split(' in ')[1].split(' ')[0]} s (details: sudo genv migrate)"
    assert f"Environment is active ({eid})" in status
    assert "Attached to GPUs at indices 0" in status

    sh.ok("genv attach --count 2")  # then `genv shell --reattach`
    assert sh.value("CUDA_VISIBLE_DEVICES") == "0,1"
    sh.ok("genv config gpu-memory 4gi")  # then `genv shell --reconfigure`
    assert sh.value("GENV_GPU_MEMORY") == "4gi"
    assert sh.value("GENV_ENVIRONMENT_NAME") == "old"
    sh.ok("genv detach --index 1")
    assert sh.value("CUDA_VISIBLE_DEVICES") == "0"
    assert attached(_env(peer_env)) == {0: [eid], 1: []}
    assert sh.ok("genv shell") == "This shell is set up for genv"  # `genv shell --ok`
    assert sh.ok("genv home -q") == ""  # no .genv anywhere: nothing, and success

    sh.ok("genv deactivate")  # --shell PID, then 1.4.3's own restore
    for name in ("GENV_ENVIRONMENT_ID", "CUDA_VISIBLE_DEVICES", "GENV_GPU_MEMORY",
                 "GENV_ENVIRONMENT_NAME", "GENV_SHELL"):
        assert sh.value(name) == "<unset>", name
    assert sh.value("PATH") == path_before
    assert sh.value("PS1") == PROMPT
    assert attached(_env(peer_env)) == {0: [], 1: []}


def test_a_new_environment_through_the_old_function(
    bash: Any, switch: Any, peer_env: dict[str, str], fake_machine: Any
) -> None:
    fake_machine.set_devices(2)
    sh = bash()
    sh.ok(INIT)
    switch.switch()
    path_before = sh.value("PATH")
    sh.ok("genv activate --gpus 1 --name fresh")
    assert sh.prompt == "(genv) " + PROMPT
    assert sh.value("GENV_ENVIRONMENT_ID") == str(sh.pid)
    assert sh.value("CUDA_VISIBLE_DEVICES") == "0"
    assert sh.value("GENV_GPUS") == "1"
    assert sh.value("PATH").split(":")[0].endswith("/genv/shims")
    output, _ = sh.run("genv activate")
    assert output.splitlines() == [
        f"genv: already running in environment {sh.pid}; run `genv deactivate` first"
    ]
    assert sh.ok("genv envs ps --format csv --no-header").split(",")[:3] == [
        str(sh.pid), "root(0)", "fresh"
    ]
    sh.ok("genv deactivate")
    assert sh.value("GENV_ENVIRONMENT_ID") == "<unset>"
    assert sh.value("CUDA_VISIBLE_DEVICES") == "<unset>"
    assert sh.value("PATH") == path_before
    assert sh.prompt == PROMPT
    assert sh.ok("genv envs ps --format csv --no-header") == ""

    sh.ok('eval "$(genv shell --deinit)"')
    assert "function" not in sh.ok("type genv")  # the program, no function any more
    output, rc = sh.run("type _genv_set_env")
    assert rc != 0


def _env(peer_env: dict[str, str]) -> dict[str, str]:
    import os

    from shellkit import with_genv_path

    return {**os.environ, **peer_env, "PATH": with_genv_path(os.environ.get("PATH"))}
