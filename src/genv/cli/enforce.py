"""``genv enforce``: parse the rules, then run the daemon (or one cycle with --interval 0)."""

from __future__ import annotations

import argparse
import os

from genv.cli import common
from genv.cli.common import checked
from genv.domain import validate
from genv.system import logs

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows it)
if TYPE_CHECKING:
    from genv.enforce.signals import Stopper

log = logs.logger("genv.enforce")


def _uid(name: str) -> int:
    """The uid of a user the admin named, looked up once, now: an unknown name is an error
    here rather than a rule that silently never applies."""
    from genv.errors import UsageError
    from genv.system import users

    uid = users.uid_of(name)
    if uid is None:
        raise UsageError(f"there is no user named {name!r} (check the name, or give a uid)")
    return uid


def _program(name: str) -> str:
    """The resolved path of a program the admin named (a path, or a name on PATH): processes
    are matched by what runs (``/proc/PID/exe``), never by the name they give themselves."""
    import shutil

    from genv.errors import UsageError

    found = name if os.path.isabs(name) else shutil.which(name)
    if found is None or not os.path.isfile(found):
        raise UsageError(
            f"--exempt-process {name}: no such program (not a file, nor on PATH); give its "
            "full path, e.g. /usr/lib/xorg/Xorg"
        )
    return os.path.realpath(found)


# A cycle on a machine where nothing changed costs under a millisecond (bench/RESULTS.md),
# so a violation is acted on within about a second for a small share of one core.
DEFAULT_INTERVAL = 1.0
MAX_INTERVAL = 86400.0  # a day: beyond that, enforcement is not running
MAX_GRACE = 3600.0


def _seconds(what: str, maximum: float):  # noqa: ANN202 - an argparse type
    return checked(lambda text: validate.seconds(text, what, maximum))


_count = checked(validate.count)
_memory = checked(validate.memory_amount)


def _listen(text: str) -> tuple[str, int]:
    from genv.metrics.server import parse_listen

    try:
        return parse_listen(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _user_value(convert):
    def parse(text: str):
        user, sep, value = text.partition("=")
        if not sep or not user:
            raise argparse.ArgumentTypeError(f"{text!r} is not of the form USER=VALUE")
        return user, convert(value)

    return parse


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--interval",
        type=_seconds("--interval", MAX_INTERVAL),
        default=DEFAULT_INTERVAL,
        help="seconds between cycles; 0 runs one cycle and exits (default: 1; genv 1.4.3: 10)",
    )
    rules = parser.add_argument_group("rules")
    rules.add_argument(
        "--non-env-processes",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="terminate GPU processes that are not in an environment (default: off)",
    )
    rules.add_argument(
        "--env-devices",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="terminate processes using devices not attached to their environment (default: on)",
    )
    rules.add_argument(
        "--env-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="terminate processes of environments over their GPU memory capacity (default: on)",
    )
    rules.add_argument(
        "--max-devices-per-user",
        type=_count,
        metavar="N",
        help="maximum devices each user may have attached",
    )
    rules.add_argument(
        "--max-devices-for-user",
        type=_user_value(_count),
        nargs="+",
        default=[],
        metavar="USER=N",
        help="per-user device maximum",
    )
    rules.add_argument(
        "--max-memory-per-user",
        type=_memory,
        metavar="AMOUNT",
        help="maximum GPU memory of each user's processes, all devices (e.g. 40g)",
    )
    rules.add_argument(
        "--max-memory-for-user",
        type=_user_value(_memory),
        nargs="+",
        default=[],
        metavar="USER=AMOUNT",
        help="per-user GPU memory maximum",
    )
    rules.add_argument(
        "--exempt-user",
        nargs="+",
        default=[],
        metavar="NAME",
        help="users whose processes are never terminated",
    )
    rules.add_argument(
        "--exempt-process",
        nargs="+",
        default=[],
        metavar="NAME",
        help="programs never terminated: a path, or a name found on PATH when genv enforce "
        "starts (e.g. Xorg); matched by the program a process runs (/proc/PID/exe), never "
        "by the name it gives itself",
    )
    acting = parser.add_argument_group("acting")
    acting.add_argument(
        "--grace",
        type=_seconds("--grace", MAX_GRACE),
        default=10.0,
        metavar="SECONDS",
        help="seconds between SIGTERM and SIGKILL (default: 10)",
    )
    acting.add_argument(
        "--dry-run", action="store_true", help="print what would be done, and do nothing"
    )
    acting.add_argument(
        "--log-format",
        choices=["plain", "json"],
        default="plain",
        help="plain lines (default) or one JSON object per finding and action",
    )
    acting.add_argument(
        "--metrics-port",
        type=_listen,
        metavar="[ADDRESS:]PORT",
        help="serve the daemon's Prometheus metrics on this port (on 127.0.0.1 unless an "
        "address is given)",
    )
    acting.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="level of the diagnostics on stderr",
    )


def run(args: argparse.Namespace) -> int:
    from genv.enforce.signals import Stopper

    # First of all: from here on SIGTERM and SIGINT stop the daemon cleanly, at any moment.
    stopper = Stopper()
    stopper.install()
    try:
        return _run(args, stopper)
    finally:
        stopper.close()


def _run(args: argparse.Namespace, stopper: Stopper) -> int:
    from genv.backends import open_backend
    from genv.enforce.daemon import Enforcer
    from genv.enforce.executor import Detacher, Terminator
    from genv.enforce.observe import Observer
    from genv.enforce.report import Reporter
    from genv.enforce.rules import RuleConfig
    from genv.store import Store
    from genv.system.watch import ProcessWatcher, raise_open_file_limit

    daemon = args.interval != 0
    # One cycle imports logging only if it has something to say at that level.
    common.log_as_daemon("genv enforce", args.log_level, when_used=not daemon)
    log.debug("started as pid %d; SIGTERM or SIGINT stops it", os.getpid())
    config = RuleConfig(
        non_env_processes=args.non_env_processes,
        env_devices=args.env_devices,
        env_memory=args.env_memory,
        max_devices_per_user=args.max_devices_per_user,
        max_devices_for_user={_uid(user): n for user, n in args.max_devices_for_user},
        max_memory_per_user=args.max_memory_per_user,
        max_memory_for_user={_uid(user): amount for user, amount in args.max_memory_for_user},
        exempt_uids=frozenset(_uid(user) for user in args.exempt_user),
        exempt_programs=frozenset(_program(name) for name in args.exempt_process),
    )
    if os.geteuid() != 0:
        log.warning(
            "not running as root: other users' GPU processes can be neither identified "
            "nor terminated (permission); run it with sudo"
        )
    if daemon:
        # One descriptor per GPU process (the watcher) and per process in its grace.
        raise_open_file_limit()
        watcher = ProcessWatcher()
        # The registered processes have a watcher of their own: the store asks about them
        # only when something changed, the observer follows the GPU processes.
        store = Store(watcher=ProcessWatcher())
        # The kernel's word of every exec and uid change (root only; else each cycle looks).
        from genv.system.proc_events import ProcessEvents

        events = ProcessEvents.open()
    else:
        watcher = None  # one cycle: nothing to follow from one cycle to the next
        events = None
        store = Store()
    lock = None
    if daemon and not args.dry_run:
        lock = store.daemon_lock()  # a second daemon on this folder stops here, in one line
    metrics_server = None
    try:
        enforcer = Enforcer(
            Observer(open_backend(), store, watcher, events),
            config,
            Terminator(args.grace, dry_run=args.dry_run),
            Detacher(store, dry_run=args.dry_run),
            Reporter(json_lines=args.log_format == "json", dry_run=args.dry_run),
            stopper=stopper,
        )
        if args.metrics_port is not None:
            from genv.errors import UsageError
            from genv.metrics.enforcement import EnforcementMetrics

            if not daemon:
                raise UsageError(
                    "--metrics-port serves a running daemon: give an --interval above 0"
                )
            metrics = EnforcementMetrics(dry_run=args.dry_run)
            metrics_server = metrics.serve(*args.metrics_port)
            enforcer.add_reporter(metrics)  # beside the Reporter: told every event and cycle
            log.info("serving metrics on %s", metrics_server.url)
        if not daemon:
            return 0 if enforcer.run_once() else 1
        log.info("enforcing every %gs", args.interval)
        enforcer.run_forever(args.interval)
        log.info("stopped")
        return 0
    finally:
        if metrics_server is not None:
            metrics_server.close()
        if lock is not None:
            lock.close()
