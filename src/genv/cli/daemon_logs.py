"""The long-running commands' log format: ``PROGRAM: LEVEL: message``, one line a record.

Apart from ``cli.common`` so that only a command that logs this way imports ``logging``.
"""

from __future__ import annotations

import logging
import sys

from genv.enforce.report import one_line


class OneLineFormatter(logging.Formatter):
    """Every record one line (a traceback too): see ``genv.enforce.report.one_line``."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


def configure(program: str, level: str) -> None:
    """genv's records, and any library's, to stderr at ``level`` and above."""
    library = logging.getLogger("genv")
    library.handlers.clear()
    library.setLevel(logging.NOTSET)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(f"{program}: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers.clear()
    root.addHandler(handler)
    root.setLevel(level.upper())
