"""Numbers and names shared by every layer, defined once."""

from __future__ import annotations

# Set in every process of an environment: how a process says which environment it is in.
ENVIRONMENT_VARIABLE = "GENV_ENVIRONMENT_ID"
# Set by genv when it runs the real nvidia-smi, so that shims step aside.
BYPASS_VARIABLE = "GENV_BYPASS"

# Pids that a binding which does not match the driver reports: never act on them.
GARBAGE_PIDS = frozenset({0, 4294967295})
# NVML's "value not available" for a 64-bit amount (memory of a process, under MPS or vGPU).
NOT_AVAILABLE = 2**64 - 1
# Starts (clock ticks since boot) fit a signed 64-bit number.
MAX_START = 2**63 - 1

# The largest pid Linux hands out (PID_MAX_LIMIT on 64-bit).
PID_MAX = 4_194_304

# Limits on what a person (or a state file) may say, so that no value can blow up a listing,
# a log line or the daemon's memory.
MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 128
MAX_DEVICES = 1024
MAX_UID = 2**32 - 2  # (uid_t)-1 means "no uid"
MAX_MEMORY = 2**60  # an exbibyte: more than any device

# genv 1.4.3's state files in the state folder (see genv.store.legacy).
LEGACY_STATE_FILES = ("envs.json", "devices.json")
LEGACY_MARKER = ".genv-1.4.3-taken-over"  # root's: 1.4.3's state was taken over (or none)
DEFAULT_STATE_DIR = "/var/tmp/genv"

# Times (seconds since the epoch) past this are not real: the year 2514, small enough to print.
MAX_TIME = 2.0**34
