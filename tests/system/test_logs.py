"""genv.system.logs: genv's loggers import logging only when something is logged, and the
command line's ``genv: warning:`` lines (or a daemon's own format) still come out as before.

Each case runs in a fresh interpreter: logging's configuration is global to a process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from genv.system import logs


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, check=False, cwd="/")


def test_a_logger_imports_logging_only_when_it_is_used() -> None:
    result = run_python("""
        import sys
        from genv.system import logs
        log = logs.logger("genv.test")
        print("logging" in sys.modules)
        log.warning("something %s", "happened")
        print("logging" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]
    assert result.stderr == "something happened\n"  # logging's last resort, as before


def test_the_logger_stands_for_the_logging_logger_of_that_name() -> None:
    import logging

    real = logging.getLogger("genv.test")
    lazy = logs.logger("genv.test")
    assert lazy.name == "genv.test"
    assert lazy.handlers is real.handlers
    assert lazy.isEnabledFor(logging.CRITICAL)


def test_a_set_up_runs_once_before_the_first_record_and_on_settle() -> None:
    result = run_python("""
        from genv.system import logs
        calls = []
        logs.when_used(lambda: calls.append(1))
        print(len(calls))
        logs.logger("genv.test").debug("nothing shown")
        logs.logger("genv.test").debug("nothing shown")
        print(len(calls))
        logs.when_used(lambda: calls.append(2))
        logs.settle()
        logs.settle()
        print(calls)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "1", "[1,", "2]"]


COMMAND = """
    import sys
    import genv.cli.version as version
    from genv.cli.main import main

    def run(args):
        from genv.system import logs
        print("logging" in sys.modules)
        {before}
        logs.logger("genv.store").warning("the %s is %d", "answer", 42)
        return 0

    version.run = run
    sys.exit(main(["version"]))
"""


def test_a_command_shows_library_warnings_as_genv_warning_lines() -> None:
    result = run_python(COMMAND.format(before="pass"))
    assert (result.returncode, result.stdout, result.stderr) == (
        0, "False\n", "genv: warning: the answer is 42\n"
    )


def test_a_daemon_format_replaces_the_command_line_one() -> None:
    before = "from genv.cli.common import log_as_daemon; log_as_daemon('genv enforce', 'info')"
    result = run_python(COMMAND.format(before=before))
    assert (result.returncode, result.stderr) == (0, "genv enforce: WARNING: the answer is 42\n")


def test_a_quieter_level_set_after_settling_holds() -> None:
    before = "import logging; logs.settle(); logging.getLogger('genv').setLevel(logging.ERROR)"
    result = run_python(COMMAND.format(before=before))
    assert (result.returncode, result.stderr) == (0, "")


def test_a_set_up_given_instead_runs_at_the_first_record_of_its_level() -> None:
    result = run_python("""
        import sys
        from genv.system import logs
        calls = []
        logs.when_used(lambda: calls.append("one-off"))
        logs.instead(lambda: calls.append("daemon"), logs.WARNING)
        log = logs.logger("genv.test")
        log.debug("dropped")
        log.info("dropped")
        print(log.isEnabledFor(logs.INFO), "logging" in sys.modules, calls)
        log.warning("said")
        print("logging" in sys.modules, calls)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["False False []", "True ['daemon']"]
    assert result.stderr == "said\n"  # (the set-up here configured nothing)


def test_a_logger_used_before_still_runs_the_set_up_given_instead() -> None:
    result = run_python("""
        from genv.system import logs
        log = logs.logger("genv.test")
        log.isEnabledFor(logs.DEBUG)  # used (and logging imported) before
        calls = []
        logs.instead(lambda: calls.append("daemon"), logs.INFO)
        log.debug("dropped")
        print(calls)
        log.warning("said")
        print(calls)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "['daemon']"]


def test_after_the_set_up_logging_levels_decide() -> None:
    result = run_python("""
        import logging
        from genv.system import logs
        logs.instead(lambda: logging.basicConfig(level=logging.DEBUG, format="%(message)s"),
                     logs.INFO)
        log = logs.logger("genv.test")
        log.debug("dropped: under the level given")
        log.info("first")
        log.debug("shown: logging was set to DEBUG")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["first", "shown: logging was set to DEBUG"]


def test_a_record_names_the_caller_not_the_stand_in() -> None:
    result = run_python("""
        import logging
        from genv.system import logs
        logging.basicConfig(level=logging.DEBUG, format="%(module)s:%(funcName)s %(message)s")
        def where():
            logs.logger("genv.test").debug("here")
            logs.logger("genv.test").info("here")
        where()
    """)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["<string>:where here"] * 2
