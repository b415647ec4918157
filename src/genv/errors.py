"""The one base class of every error a user can cause, so front ends turn them into one line.

Each message is one line that says what is wrong and what to do. ``exit_code`` is what the
command line exits with: 1 for a refusal or a failure, 2 for a usage error (as argparse).
"""

from __future__ import annotations


class GenvError(RuntimeError):
    """An error the user can cause or fix; never a bug.

    A RuntimeError, since genv 1.4.3 raised those: programs written for it keep catching them.
    """

    exit_code = 1


class UsageError(GenvError):
    """What was typed makes no sense (a bad value, a missing or conflicting option)."""

    exit_code = 2
