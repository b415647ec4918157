"""genv: GPU environments on a shared Linux machine, and the daemon that enforces them."""

__version__ = "2.0.0"
