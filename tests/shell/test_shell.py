"""The shell integration end to end, in a real interactive bash and zsh on a simulated machine."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shellkit import PROMPT, Shell, attached, genv

StartShell = Callable[..., Shell]

INIT = 'eval "$(genv shell --init)"'
SNAPSHOT = "env | sort > {out}.env; typeset -p PS1 > {out}.ps1"


def snapshot(shell: Shell, folder: Path, name: str) -> tuple[str, str]:
    """The shell's exported environment and its PS1 (value and attributes), as text."""
    out = folder / name
    shell.ok(SNAPSHOT.format(out=out))
    return (out.with_suffix(".env").read_text(), out.with_suffix(".ps1").read_text())


# -- setup ----------------------------------------------------------------------------------


def test_plain_activate_says_how_to_set_up_the_shell(shell_env: dict[str, str]) -> None:
    result = genv("activate", env=shell_env)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("genv: ")
    assert lines[1].strip() == INIT
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


def test_init_defines_a_function(shell: StartShell, kind: str) -> None:
    sh = shell(kind)
    sh.ok(INIT)
    assert "function" in sh.ok("type genv")
    assert sh.ok("genv shell") == "This shell is set up for genv"
    assert sh.ok("genv status") == "Environment is not active"


# -- activate / deactivate ------------------------------------------------------------------


def test_activate_sets_variables_and_prompt_and_deactivate_restores_exactly(
    shell: StartShell, kind: str, shell_env: dict[str, str], shared_tmp: Path,
) -> None:
    sh = shell(kind)
    sh.ok(INIT)
    # set-but-empty, set, and unset variables must all come back as they were
    sh.ok("export CUDA_VISIBLE_DEVICES=''; export GENV_GPU_MEMORY=stale; unset GENV_GPUS")
    before = snapshot(sh, shared_tmp, "before")
    path_before = sh.value("PATH")

    sh.ok("genv activate --gpus 1 --name mine")
    assert sh.prompt == "(genv) " + PROMPT
    eid = sh.value("GENV_ENVIRONMENT_ID")
    assert eid == str(sh.pid)
    assert sh.value("CUDA_VISIBLE_DEVICES") == "0"
    assert sh.value("GENV_GPUS") == "1"
    assert sh.value("GENV_ENVIRONMENT_NAME") == "mine"
    assert sh.value("GENV_GPU_MEMORY") == "<unset>"
    shims = str(Path(__file__).resolve().parents[2] / "src" / "genv" / "shims")
    assert sh.value("PATH") == f"{shims}:{path_before}"
    assert sh.ok("command -v nvidia-smi") == f"{shims}/nvidia-smi"
    assert sh.value("PS1") == "(genv) " + PROMPT
    status = sh.ok("genv status").splitlines()
    assert status[:2] == [f"Environment is active ({eid})", "Attached to GPUs at indices 0"]
    assert "    Name: mine" in status and "    Device count: 1" in status
    assert attached(shell_env) == {0: [eid], 1: []}

    output, rc = sh.run("genv activate")
    assert rc == 1 and output.startswith("genv: already") and len(output.splitlines()) == 1

    sh.ok("genv deactivate")
    assert sh.prompt == PROMPT
    assert snapshot(sh, shared_tmp, "after") == before
    assert sh.ok("genv status") == "Environment is not active"
    assert attached(shell_env) == {0: [], 1: []}


def test_deactivate_restores_an_exported_prompt_and_keeps_later_path_changes(
    shell: StartShell, shared_tmp: Path,
) -> None:
    sh = shell("bash")
    sh.ok(INIT)
    sh.ok("PS1='λ \\w '\"$PS1\"; export PS1")
    before = snapshot(sh, shared_tmp, "before")
    sh.ok("genv activate --no-prompt")
    assert sh.prompt == PROMPT
    sh.ok("genv deactivate")
    assert snapshot(sh, shared_tmp, "after") == before
    sh.ok("genv activate")
    assert sh.value("PS1").startswith("(genv) λ ")
    sh.ok("genv deactivate")
    assert snapshot(sh, shared_tmp, "after") == before

    path_before = sh.value("PATH")
    sh.ok("genv activate")
    sh.ok('PATH="$PATH:/opt/extra"')
    sh.ok("genv deactivate")
    assert sh.value("PATH") == f"{path_before}:/opt/extra"


def test_failed_activation_changes_nothing(
    shell: StartShell, shared_tmp: Path, shell_env: dict[str, str],
) -> None:
    sh = shell("bash")
    sh.ok(INIT)
    before = snapshot(sh, shared_tmp, "before")
    output, rc = sh.run("genv activate --gpus 3")
    assert rc == 1
    assert len(output.splitlines()) == 1 and output.startswith("genv: ")
    assert snapshot(sh, shared_tmp, "after") == before
    assert genv("envs", "ps", "--format", "csv", "--no-header", env=shell_env).stdout == ""
    output, rc = sh.run("genv activate --gpu-memory lots")
    assert rc == 2 and "invalid memory amount" in output and "Traceback" not in output


# -- nvidia-smi -----------------------------------------------------------------------------


def test_nvidia_smi_shows_only_the_environment(
    shell: StartShell, machine: Any, sleeper: Any, background: Any, shared_tmp: Path,
) -> None:
    real = shared_tmp / "realbin"
    real.mkdir()
    (real / "nvidia-smi").write_text('#!/bin/sh\necho "real nvidia-smi $* bypass=$GENV_BYPASS"\n')
    (real / "nvidia-smi").chmod(0o755)
    sh = shell("bash")
    sh.ok(f'PATH="$PATH:{real}"')
    sh.ok(INIT)
    assert sh.ok("nvidia-smi -q") == "real nvidia-smi -q bypass="  # no shim outside

    sh.ok("genv activate --gpus 1 --gpu-memory 4gi")
    mine = int(sh.ok("sleep 300 & echo $!").splitlines()[-1])
    background(mine)
    foreign = sleeper()
    machine.add_process(mine, 0, "1gi")
    machine.add_process(foreign.pid, 0, "2gi")
    machine.add_process(foreign.pid, 1, "3gi")

    table = sh.ok("nvidia-smi")
    assert f" {mine} " in table and "sleep" in table
    assert str(foreign.pid) not in table
    assert "GPU-00000000-0000-0000-0000-000000000000" in table
    assert "GPU-00000000-0000-0000-0000-000000000001" not in table
    assert "1024MiB / 4096MiB" in table

    assert sh.ok("nvidia-smi --query-gpu=index,memory.used,memory.total "
                 "--format=csv,noheader,nounits") == "0, 1024, 4096"
    assert sh.ok("nvidia-smi --query-gpu=index,memory.total --format=csv").splitlines() == [
        "index, memory.total [MiB]", "0, 4096 MiB"]
    assert sh.ok("nvidia-smi --query-compute-apps=pid,used_memory "
                 "--format=csv,noheader") == f"{mine}, 1024 MiB"
    assert sh.ok("nvidia-smi -L").startswith("GPU 0: ")
    # what the shim does not understand goes to the real one, unchanged
    assert sh.ok("nvidia-smi -q -d MEMORY") == "real nvidia-smi -q -d MEMORY bypass=1"
    assert sh.ok("GENV_BYPASS=1 nvidia-smi") == "real nvidia-smi  bypass=1"

    sh.ok("genv detach")
    output, rc = sh.run("nvidia-smi")
    assert (output, rc) == ("No devices were found", 6)

    sh.ok(f'PATH="$(echo "$PATH" | sed "s#:{real}##")"')
    output, rc = sh.run("nvidia-smi -q")
    assert rc == 127 and len(output.splitlines()) == 1 and "no" in output


# -- attach / detach / config ---------------------------------------------------------------


def test_attach_detach_config_update_the_shell(shell: StartShell, kind: str) -> None:
    sh = shell(kind)
    sh.ok(INIT)
    sh.ok("genv activate")
    assert sh.value("CUDA_VISIBLE_DEVICES") == "-1"
    assert sh.value("GENV_GPUS") == "<unset>"

    sh.ok("genv attach --count 2")
    assert sh.value("CUDA_VISIBLE_DEVICES") == "0,1"
    sh.ok("genv detach --index 0")
    assert sh.value("CUDA_VISIBLE_DEVICES") == "1"
    sh.ok("genv detach")
    assert sh.value("CUDA_VISIBLE_DEVICES") == "-1"
    sh.ok("genv attach --index 1")
    assert sh.value("CUDA_VISIBLE_DEVICES") == "1"

    sh.ok("genv config name exp-1")
    sh.ok("genv config gpu-memory 4g")
    sh.ok("genv config gpus 2")
    assert sh.value("GENV_ENVIRONMENT_NAME") == "exp-1"
    assert sh.value("GENV_GPU_MEMORY") == "4g"
    assert sh.value("GENV_GPUS") == "2"
    assert sh.ok("genv config").splitlines() == ["gpu-memory: 4g", "gpus: 2", "name: exp-1"]
    assert sh.ok("genv config name") == "exp-1"
    sh.ok("genv attach")
    assert sh.value("CUDA_VISIBLE_DEVICES") == "0,1"

    sh.ok("genv config name --clear")
    assert sh.value("GENV_ENVIRONMENT_NAME") == "<unset>"
    sh.ok("genv config --clear")
    assert sh.ok("genv config") == ""
    assert sh.value("GENV_GPUS") == "<unset>" and sh.value("GENV_GPU_MEMORY") == "<unset>"

    output, rc = sh.run("genv config gpus many")
    assert rc == 2 and output.startswith("genv: ") and len(output.splitlines()) == 1
    output, rc = sh.run("genv attach --index 7")
    assert rc == 1 and output.startswith("genv: ") and len(output.splitlines()) == 1
    sh.ok("genv deactivate")
    output, rc = sh.run("genv attach")
    assert rc == 1 and output == (
        "genv: not running in an active environment; start one with: genv activate")


def test_save_and_load_in_a_project(shell: StartShell, workdir: Path) -> None:
    project = workdir / "project"
    (project / "src").mkdir(parents=True)
    sh = shell("bash", cwd=project)
    sh.ok(INIT)
    output, rc = sh.run("genv home")
    assert rc == 1 and output.startswith("genv: no .genv folder")
    sh.ok("genv activate --gpus 1 --name proj")
    sh.ok("genv config gpu-memory 8g")
    sh.ok("genv config --save -q")
    assert {p.name: p.read_text() for p in (project / ".genv").iterdir()} == {
        "name": "proj", "gpus": "1", "gpu-memory": "8g"}
    sh.ok("genv deactivate")

    sh.ok("cd src")
    assert sh.ok("genv home") == str(project / ".genv")
    sh.ok("genv activate")
    assert sh.value("GENV_ENVIRONMENT_NAME") == "proj"
    assert sh.value("GENV_GPU_MEMORY") == "8g"
    assert sh.value("CUDA_VISIBLE_DEVICES") == "0"
    sh.ok("genv config --clear")
    sh.ok("genv config --load")
    assert sh.value("GENV_GPUS") == "1" and sh.value("GENV_ENVIRONMENT_NAME") == "proj"
    sh.ok("genv deactivate")

    sh.ok("genv activate --no-attach")
    assert sh.value("GENV_GPUS") == "1" and sh.value("CUDA_VISIBLE_DEVICES") == "-1"
    sh.ok("genv deactivate")
    sh.ok("genv activate --no-load")
    assert sh.value("GENV_ENVIRONMENT_NAME") == "<unset>"
    sh.ok("genv deactivate")

    sh.ok(f"cd {workdir} && touch .genv")  # a file, not a folder: no project, and no save
    sh.ok("genv activate")
    output, rc = sh.run("genv config --save")
    assert rc == 1 and output.startswith("genv: cannot save the configuration in ")
    assert len(output.splitlines()) == 1


# -- several terminals, closing a terminal ------------------------------------------------


def test_second_terminal_joins_with_id(shell: StartShell, shell_env: dict[str, str]) -> None:
    first = shell("bash")
    first.ok(INIT)
    first.ok("genv activate --gpus 1 --name shared")
    first.ok("genv attach --index 1")  # more than configured: joining must not undo it
    eid = first.value("GENV_ENVIRONMENT_ID")

    second = shell("bash")
    second.ok(INIT)
    second.ok(f"genv activate --id {eid}")
    assert second.value("GENV_ENVIRONMENT_ID") == eid
    assert second.value("CUDA_VISIBLE_DEVICES") == first.value("CUDA_VISIBLE_DEVICES") == "0,1"
    assert second.value("GENV_ENVIRONMENT_NAME") == "shared"
    rows = genv("envs", "ps", "--format", "csv", "--no-header", env=shell_env).stdout.splitlines()
    assert len(rows) == 1
    assert sorted(rows[0].split(",")[-1].split()) == sorted([str(first.pid), str(second.pid)])

    first.close()  # the environment lives on in the second terminal
    assert second.value("CUDA_VISIBLE_DEVICES") == "0,1"
    assert attached(shell_env) == {0: [eid], 1: [eid]}


def test_closing_the_terminal_ends_the_environment(
    shell: StartShell, shell_env: dict[str, str],
) -> None:
    sh = shell("bash")
    sh.ok(INIT)
    sh.ok("genv activate --gpus 2")
    eid = sh.value("GENV_ENVIRONMENT_ID")
    assert attached(shell_env) == {0: [eid], 1: [eid]}
    sh.child.sendline("exit")
    sh.child.expect("exit")
    sh.child.wait()
    assert attached(shell_env) == {0: [], 1: []}
    assert genv("envs", "ps", "--format", "csv", "--no-header", env=shell_env).stdout == ""


# -- IDE pre-activation ---------------------------------------------------------------------


def test_preactivate_at_init(shell: StartShell, kind: str) -> None:
    sh = shell(kind, env={"GENV_PREACTIVATE": "1", "GENV_PREACTIVATE_GPUS": "1",
                          "GENV_PREACTIVATE_ENVIRONMENT_NAME": "ide",
                          "GENV_PREACTIVATE_PROMPT": "0"})
    sh.ok(INIT)
    assert sh.value("GENV_ENVIRONMENT_ID") == str(sh.pid)
    assert sh.value("GENV_ENVIRONMENT_NAME") == "ide"
    assert sh.value("CUDA_VISIBLE_DEVICES") == "0"
    assert sh.prompt == PROMPT
    sh.ok(INIT)  # a second init (a nested rc file) does not activate again
    assert sh.value("GENV_ENVIRONMENT_ID") == str(sh.pid)


# -- lock ------------------------------------------------------------------------------------


def test_lock_runs_the_command_and_passes_its_exit_code(
    shell: StartShell, shell_env: dict[str, str],
) -> None:
    # Outside an environment there is nothing to lock: the command just runs (as in 1.4.3).
    result = genv("lock", "sh", "-c", "echo outside; exit 3", env=shell_env)
    assert (result.returncode, result.stdout, result.stderr) == (3, "outside\n", "")
    sh = shell("bash")
    sh.ok(INIT)
    sh.ok("genv activate --gpus 1")
    assert sh.ok("genv lock echo hello") == "hello"
    assert sh.run("genv lock sh -c 'exit 7'")[1] == 7
    output, rc = sh.run("genv lock no-such-command-here")
    assert rc == 127 and output == "genv: no-such-command-here: command not found"


def test_lock_makes_over_subscribed_environments_take_turns(
    shell: StartShell, shared_tmp: Path,
) -> None:
    first = shell("bash")
    first.ok(INIT)
    first.ok("genv activate --gpus 1")
    second = shell("bash")
    second.ok(INIT)
    second.ok("genv activate --gpus 2 -o")
    assert second.value("CUDA_VISIBLE_DEVICES") == "0,1"

    started, done = shared_tmp / "started", shared_tmp / "done"
    first.child.sendline(f"genv lock sh -c 'touch {started}; sleep 2; touch {done}'")
    for _ in range(100):
        if started.exists():
            break
        subprocess.run(["sleep", "0.05"], check=True)
    assert started.exists()
    output = second.ok(f"genv lock sh -c 'test -e {done} && echo after'")
    assert output.splitlines() == [
        "genv: waiting for device 0, which another environment has locked...", "after"]
    first.child.expect(r"(\(genv\) )?genv-test> ")
