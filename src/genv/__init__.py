"""genv: GPU environments on a shared multi-user Linux machine, and the daemon that enforces them."""

__version__ = "2.0.0"
