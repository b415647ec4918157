"""User commands that act on the current shell: activate, deactivate, attach, detach, config,
status, home and shell.

A program cannot change the variables of the shell that runs it, so the ``genv`` shell function
(``genv shell --init``) runs these commands with ``_GENV_SHELL_PID`` set and evaluates what
they print on stdout: shell code. Text for the user goes out as ``printf`` lines in that code,
errors go to stderr and leave the shell untouched. Run as a plain program the same commands
change the state but print no code, and activate/deactivate refuse, since they would be
pointless.

Only argparse, os and sys are imported at the top: ``genv shell --init`` runs in every new
shell and must not pay for the store.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from pathlib import Path
    from types import ModuleType

SHELL_PID = "_GENV_SHELL_PID"  # set by the shell function, for that one command
SHELL_PROMPT = "_GENV_PS1"  # the shell's prompt, which is seldom exported
SHELL_PROMPT_SET = "_GENV_PS1_SET"  # "1" when the shell has a PS1 at all (even empty)
SHELL_STATE = "GENV_SHELL_STATE"  # what activation changed, so deactivation can undo it
PROMPT_PREFIX = "(genv) "
INIT_COMMAND = 'eval "$(genv shell --init)"'
_PLACEHOLDER = "__GENV__"


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    ADDERS[command](parser)


def run(args: argparse.Namespace) -> int:
    return RUNNERS[args.command](args)


# -- arguments ------------------------------------------------------------------------------


def _count(text: str) -> int:
    from genv.cli.common import checked
    from genv.domain import validate

    return checked(validate.count)(text)


def _index(text: str) -> int:
    from genv.cli.common import checked
    from genv.domain import validate

    return checked(validate.device_index)(text)


def _add_activate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--eid",
        "--id",
        dest="eid",
        metavar="EID",
        help="Join (or create) this environment; default: a new one",
    )
    parser.add_argument("--name", help="Environment name")
    parser.add_argument("--gpus", metavar="N", help="Number of devices to attach")
    parser.add_argument(
        "--gpu-memory", metavar="AMOUNT", help="Device memory capacity of the environment (e.g. 4g)"
    )
    parser.add_argument("--no-prompt", action="store_true", help="Leave the prompt as it is")
    parser.add_argument("--no-attach", action="store_true", help="Do not attach devices")
    parser.add_argument(
        "-o",
        "--over-subscribe",
        action="store_true",
        help="Share devices other environments hold if needed",
    )
    parser.add_argument(
        "--no-load",
        action="store_true",
        help="Do not load the project's saved configuration (.genv/)",
    )
    _add_legacy_shell(parser)


def _add_legacy_shell(parser: argparse.ArgumentParser) -> None:
    """``--shell PID``: what genv 1.4.3's shell function passes (still loaded in terminals
    opened before the switch); the answer is then shell code for that function."""
    parser.add_argument("--shell", dest="legacy_shell", type=_pid, help=argparse.SUPPRESS)


def _pid(text: str) -> int:
    from genv.cli.common import checked
    from genv.domain import validate

    return checked(validate.pid)(text)


def _add_deactivate(parser: argparse.ArgumentParser) -> None:
    _add_legacy_shell(parser)


def _add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="Print nothing when there is no .genv folder"
    )


def _add_attach(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--config", action="store_true", help="Attach as many devices as configured (the default)"
    )
    mode.add_argument("--count", type=_count, metavar="N", help="Total number of devices wanted")
    mode.add_argument("--index", type=_index, metavar="I", help="Attach the device with this index")
    mode.add_argument(
        "--refresh", action="store_true", help="Only bring this shell's variables up to date"
    )
    parser.add_argument(
        "-o",
        "--over-subscribe",
        action="store_true",
        help="Share devices other environments hold if needed",
    )


def _add_detach(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--index", type=_index, metavar="I", help="Detach this device only (default: all)"
    )


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "field",
        nargs="?",
        choices=("name", "gpus", "gpu-memory"),
        help="The field to show, set or clear (default: all)",
    )
    parser.add_argument("value", nargs="?", help="The new value of the field")
    parser.add_argument("--clear", action="store_true", help="Clear the field (or all)")
    parser.add_argument(
        "-q", "--quiet", "--refresh", dest="quiet", action="store_true", help="Print nothing"
    )
    parser.add_argument(
        "--save", action="store_true", help="Save the configuration in the project folder (.genv/)"
    )
    parser.add_argument(
        "--load",
        action="store_true",
        help="Load the configuration saved in the project folder (.genv/)",
    )


def _add_nothing(parser: argparse.ArgumentParser) -> None:
    pass


def _add_shell(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--init",
        action="store_true",
        help="Print the shell code that defines the genv function (bash, zsh)",
    )
    parser.add_argument("--shell", choices=("bash", "zsh"), help=argparse.SUPPRESS)
    # What genv 1.4.3's shell function asks (terminals opened before the switch).
    for flag in ("--deinit", "--ok", "--reattach", "--reconfigure"):
        parser.add_argument(
            flag, dest="legacy", action="store_const", const=flag[2:], help=argparse.SUPPRESS
        )
    # The nvidia-smi shim runs `genv shell --nvidia-smi ARGS...` inside an environment.
    parser.add_argument(
        "--nvidia-smi", dest="nvidia_smi", nargs=argparse.REMAINDER, help=argparse.SUPPRESS
    )


# -- shell code -----------------------------------------------------------------------------


def quote(text: str) -> str:
    """``text`` as one shell word that bash and zsh read back unchanged."""
    return "'" + text.replace("'", "'\\''") + "'"


class Script:
    """Shell code for the genv function to evaluate, or plain output without the function."""

    def __init__(self, shell: bool) -> None:
        self.shell = shell
        self.lines: list[str] = []

    def export(self, name: str, value: str | None) -> None:
        self.lines.append(f"unset {name}" if value is None else f"export {name}={quote(value)}")

    def assign(self, name: str, value: str | None) -> None:
        """Set a shell variable without touching whether it is exported (the prompt)."""
        self.lines.append(f"unset {name}" if value is None else f"{name}={quote(value)}")

    def echo(self, text: str) -> None:
        if self.shell:
            self.lines.append(f"printf '%s\\n' {quote(text)}")
        else:
            print(text)

    def emit(self) -> None:
        """Write the code as the bytes the shell gave us (a prompt need not be UTF-8)."""
        if self.shell and self.lines:
            sys.stdout.flush()
            sys.stdout.buffer.write(os.fsencode("\n".join(self.lines) + "\n"))
            sys.stdout.buffer.flush()


def _shell_pid() -> int | None:
    from genv.domain.validate import decimal

    text = os.environ.get(SHELL_PID, "")
    return int(text) if decimal(text) and len(text) <= 10 else None


def _require_shell(command: str) -> int | None:
    """The shell's pid, or None after telling the user how to set the shell up."""
    pid = _shell_pid()
    if pid is None:
        print(
            f"genv: `genv {command}` changes your shell, which needs genv's shell function; "
            "set it up with (and add it to ~/.bashrc or ~/.zshrc):\n"
            f"    {INIT_COMMAND}",
            file=sys.stderr,
        )
    return pid


def _prompt() -> str | None:
    """The shell's current prompt as the function passed it; None when it has none."""
    if os.environ.get(SHELL_PROMPT_SET) != "1":
        return None
    return os.environ.get(SHELL_PROMPT, "")


def _update_variables(script: Script, eid: str) -> None:
    """Export the environment's variables as the store has them now (devices, config)."""
    from genv.core import session
    from genv.store import Store

    view = _current_view(Store(), eid)
    for name, value in session.variables(eid, view.indices, view.env.config).items():
        if name != session.ENVIRONMENT_ID:
            script.export(name, value)


# -- activate / deactivate ------------------------------------------------------------------


def _current_view(store, eid: str):  # noqa: ANN001, ANN202 - imported lazily
    """This shell's environment and its devices; a clear line when it has ended."""
    from genv.core import environments, session
    from genv.store import NotFound

    try:
        return environments.find(store, eid)
    except NotFound:
        raise session.SessionError(
            f"environment {eid} no longer exists (its processes are gone); run: genv deactivate"
        ) from None


def _activate(args: argparse.Namespace) -> int:
    import json

    from genv.core import environments, project, session
    from genv.store import Store

    legacy = args.legacy_shell is not None
    shell_pid = args.legacy_shell if legacy else _require_shell("activate")
    if shell_pid is None:
        return 1
    active = session.current_eid()
    if active is not None:
        raise session.SessionError(
            f"already running in environment {active}; run `genv deactivate` first"
        )
    changes: dict[str, str | int | None] = {}
    if args.name is not None:
        changes["name"] = session.check_value("name", args.name)
    if args.gpus is not None:
        changes["gpus"] = session.check_value("gpus", str(args.gpus))
    if args.gpu_memory is not None:
        changes["gpu_memory"] = session.check_value("gpu-memory", args.gpu_memory)
    saved = None
    if not args.no_load:
        home = project.find_home()
        saved = project.read_project(home) if home is not None else None
    eid = args.eid or str(shell_pid)
    view = environments.enter(
        Store(),
        eid,
        shell_pid,
        changes,
        saved,
        attach=not args.no_attach,
        over_subscribe=args.over_subscribe,
    )
    env, indices = view.env, view.indices
    if legacy:
        _legacy_activation(eid, indices, env.config, prompt=not args.no_prompt)
        return 0

    shims = session.shims_dir()
    old_path = os.environ.get("PATH")
    new_path = f"{shims}:{old_path}" if old_path else shims
    old_prompt = _prompt()
    new_prompt = None if args.no_prompt else PROMPT_PREFIX + (old_prompt or "")
    saved = {name: os.environ.get(name) for name in (*session.VARIABLES, "PATH")}
    state = {"saved": saved, "path": new_path, "shims": shims, "prompt": [old_prompt, new_prompt]}

    script = Script(shell=True)
    script.export(SHELL_STATE, json.dumps(state, separators=(",", ":")))
    for name, value in session.variables(eid, indices, env.config).items():
        script.export(name, value)
    script.export("PATH", new_path)
    if new_prompt is not None:
        script.assign("PS1", new_prompt)
    script.emit()
    return 0


def _deactivate(args: argparse.Namespace) -> int:
    from genv.core import environments, session
    from genv.store import Store, StoreError

    legacy = args.legacy_shell is not None
    shell_pid = args.legacy_shell if legacy else _require_shell("deactivate")
    if shell_pid is None:
        return 1
    session.require_eid()
    try:
        environments.unregister(Store(), pid=shell_pid)
    except StoreError as error:  # leaving must work even when the state cannot be changed
        print(f"genv: warning: {error}", file=sys.stderr)
    script = Script(shell=True)
    if legacy:  # genv 1.4.3's function keeps what to undo itself
        script.lines += ["_genv_unset_envs", "_genv_restore_envs"]
    else:
        _restore(script, _load_state(), session)
    script.emit()
    return 0


# -- genv 1.4.3's shell function ------------------------------------------------------------
# Its helpers: _genv_set_env NAME VALUE (export, and remember to unset it), _genv_replace_env
# NAME VALUE (the same, keeping the old value to restore), _genv_unset_env NAME.

LEGACY_CONFIG = (
    ("GENV_ENVIRONMENT_NAME", "name"),
    ("GENV_GPU_MEMORY", "gpu_memory"),
    ("GENV_GPUS", "gpus"),
)
LEGACY_FUNCTIONS = (
    "genv",
    "_genv_restore_envs",
    "_genv_restore_env",
    "_genv_unset_envs",
    "_genv_unset_env",
    "_genv_replace_env",
    "_genv_set_env",
    "_genv_backup_env",
    "_genv_append_to_env",
    "_genv_program",
)


def _legacy_config_lines(config: object) -> list[str]:
    lines = []
    for name, key in LEGACY_CONFIG:
        value = getattr(config, key)
        lines.append(
            f"_genv_unset_env {name}"
            if value is None
            else f"_genv_set_env {name} {quote(str(value))}"
        )
    return lines


def _legacy_devices_line(indices: list[int], activating: bool = False) -> str:
    """Set CUDA_VISIBLE_DEVICES. Kept aside (to restore) only on activation: 1.4.3 kept it
    aside on every change, so that deactivation restored the next-to-last devices instead
    of the value from before the environment."""
    from genv.core import session

    value = quote(session.devices_value(indices))
    managed = session.CUDA_VISIBLE_DEVICES in os.environ.get("GENV_ENVS", "").split(":")
    if managed and not activating:
        return f"export CUDA_VISIBLE_DEVICES={value}"
    return f"_genv_replace_env CUDA_VISIBLE_DEVICES {value}"


def _legacy_activation(eid: str, indices: list[int], config: object, prompt: bool) -> None:
    from genv.core import session

    script = Script(shell=True)
    script.lines += [
        "_genv_set_env GENV_SHELL 1",
        f"_genv_set_env GENV_ENVIRONMENT_ID {quote(eid)}",
        f'_genv_replace_env PATH {quote(session.shims_dir())}":$PATH"',
        *_legacy_config_lines(config),
        _legacy_devices_line(indices, activating=True),
    ]
    if prompt:
        script.lines.append('_genv_replace_env PS1 "(genv) ${PS1-}"')
    script.emit()


def _legacy_shell(action: str) -> int:
    """``genv shell --reattach`` and friends, as 1.4.3's function asks them."""
    from genv.core import session
    from genv.store import Store

    script = Script(shell=True)
    if action == "deinit":
        script.lines += [f"unset -f {name}" for name in LEGACY_FUNCTIONS]
    elif action == "ok":
        print("This shell is set up for genv")
        return 0
    else:
        eid = session.require_eid()
        view = _current_view(Store(), eid)
        if action == "reattach":
            script.lines.append(_legacy_devices_line(view.indices))
        else:
            script.lines += _legacy_config_lines(view.env.config)
    script.emit()
    return 0


def _load_state() -> dict:
    import json

    try:
        state = json.loads(os.environ.get(SHELL_STATE, ""))
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


def _restore(script: Script, state: dict, session: ModuleType) -> None:
    """Put back what activation changed; keep what the user changed since, where we can.

    PATH and the prompt return to their exact old values when they are still what activation
    made them; otherwise only the shims entry and the ``(genv)`` prefix are taken out.
    """
    found = state.get("saved")
    saved: dict = found if isinstance(found, dict) else {}
    for name in session.VARIABLES:
        value = saved.get(name)
        script.export(name, value if isinstance(value, str) else None)

    path = os.environ.get("PATH")
    if "PATH" in saved and path == state.get("path"):
        script.export("PATH", saved["PATH"])
    elif path is not None:
        shims = state.get("shims") or session.shims_dir()
        entries = path.split(":")
        if shims in entries:
            entries.remove(shims)
            script.export("PATH", ":".join(entries))

    prompts = state.get("prompt")
    old_prompt, new_prompt = (
        prompts if isinstance(prompts, list) and len(prompts) == 2 else (None, PROMPT_PREFIX)
    )
    current = _prompt()
    if new_prompt is not None and current is not None:
        if current == new_prompt:
            script.assign("PS1", old_prompt)
        elif current.startswith(PROMPT_PREFIX):
            script.assign("PS1", current[len(PROMPT_PREFIX) :])
    script.export(SHELL_STATE, None)


# -- attach / detach / config ---------------------------------------------------------------


def _attach(args: argparse.Namespace) -> int:
    from genv.core import devices, session
    from genv.store import Store

    eid = session.require_eid()
    if not args.refresh:
        devices.attach(
            Store(), eid, count=args.count, index=args.index, over_subscribe=args.over_subscribe
        )
    script = Script(shell=_shell_pid() is not None)
    if script.shell:
        _update_variables(script, eid)
    script.emit()
    return 0


def _detach(args: argparse.Namespace) -> int:
    from genv.core import devices, session
    from genv.store import Store

    eid = session.require_eid()
    devices.detach(Store(), eid, args.index)
    script = Script(shell=_shell_pid() is not None)
    if script.shell:
        _update_variables(script, eid)
    script.emit()
    return 0


def _config(args: argparse.Namespace) -> int:
    from genv.core import environments, project, session
    from genv.errors import UsageError
    from genv.store import Store

    if args.value is not None and args.clear:
        raise UsageError("give either a value or --clear, not both")
    eid = session.require_eid()
    store = Store()
    settings: dict[str, object] = {}
    if args.load:
        settings.update(project.read_project(project.require_home()))
    if args.field is not None and args.clear:
        settings[session.field_key(args.field)] = None
    elif args.field is not None and args.value is not None:
        settings[session.field_key(args.field)] = session.check_value(args.field, args.value)
    elif args.field is None and args.clear:
        settings.update({session.field_key(field): None for field in session.CONFIG_FIELDS})
    if settings:
        _current_view(store, eid)
        env = environments.configure(store, eid, **settings)
    else:
        env = _current_view(store, eid).env
    if args.save:
        project.write_project(project.find_home() or _new_home(), env.config)

    script = Script(shell=_shell_pid() is not None)
    if not args.quiet and not args.clear:
        if args.field is None:
            for line in session.config_lines(env.config):
                script.echo(line)
        elif args.value is None:
            value = getattr(env.config, session.field_key(args.field))
            if value is not None:
                script.echo(str(value))
    if script.shell:
        _update_variables(script, eid)
    script.emit()
    return 0


def _new_home() -> Path:
    from pathlib import Path

    from genv.core import project

    return Path.cwd() / project.PROJECT_DIR


# -- status / home / shell ------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    from genv.core import session
    from genv.store import Store

    eid = session.current_eid()
    if eid is None:
        print("Environment is not active")
        return 0
    view = _current_view(Store(), eid)
    env, indices = view.env, view.indices
    config = env.config
    attached = (
        f"Attached to GPUs at indices {','.join(str(i) for i in indices)}"
        if indices
        else "Detached from GPUs"
    )
    print(
        f"Environment is active ({eid})\n"
        f"{attached}\n"
        "\n"
        "Configuration\n"
        f"    Name: {config.name or 'N/A'}\n"
        f"    Device count: {'N/A' if config.gpus is None else config.gpus}\n"
        f"    GPU memory capacity: {config.gpu_memory or 'N/A'}\n"
    )
    return 0


def _home(args: argparse.Namespace) -> int:
    from genv.core import project

    home = project.find_home() if args.quiet else project.require_home()
    if home is not None:
        print(home)
    return 0


def _shell(args: argparse.Namespace) -> int:
    if args.nvidia_smi is not None:
        from genv.smi import main as smi

        return smi.main(args.nvidia_smi)
    if args.init:
        sys.stdout.write(init_script())
        return 0
    if args.legacy is not None:
        return _legacy_shell(args.legacy)
    if _shell_pid() is None:
        _require_shell("shell")
        return 1
    print("This shell is set up for genv")
    return 0


def init_script() -> str:
    """The init script, calling this very genv so no PATH lookup (or pyenv shim) is paid."""
    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "shell", "init.sh"
    )
    with open(path, encoding="utf-8") as file:
        text = file.read()
    return text.replace(_PLACEHOLDER, genv_command())


def genv_command() -> str:
    """Shell words that run this very genv as fast as Python can start.

    This interpreter without ``site`` (-S): site scans site-packages and runs every .pth
    file, 5-30 ms per call, only to compute the module path, which is taken from this process
    instead. Neither a PATH lookup nor a version-manager shim (pyenv: ~50 ms) is paid. The
    current folder is never on that path, so no file in it can shadow a module.
    """
    # sys.path[0] is the script's folder, or the current folder under ``python -m``: never
    # keep it. genv's own folder is added explicitly instead.
    package_root = str(Path(__file__).resolve().parents[2])
    paths = [p for p in sys.path[1:] if p and os.path.isabs(p)]
    if package_root not in paths:
        paths.append(package_root)
    code = f"import sys;sys.path[:]={paths!r};from genv.cli.main import main;sys.exit(main())"
    return f"{quote(sys.executable)} -S -c {quote(code)}"


ADDERS = {
    "activate": _add_activate,
    "attach": _add_attach,
    "config": _add_config,
    "deactivate": _add_deactivate,
    "detach": _add_detach,
    "home": _add_home,
    "shell": _add_shell,
    "status": _add_nothing,
}

RUNNERS = {
    "activate": _activate,
    "attach": _attach,
    "config": _config,
    "deactivate": _deactivate,
    "detach": _detach,
    "home": _home,
    "shell": _shell,
    "status": _status,
}
