#!/bin/sh
# Builds the stand-ins (build.sh) into OUTDIR (default standins/build) and prints the path of
# the NVML one, OUTDIR/libnvidia-ml.so.1. Use it by putting OUTDIR first in LD_LIBRARY_PATH
# before the program starts, with GENV_FAKE_MACHINE naming the simulated machine.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
built=$(sh "$here/build.sh" "$@")
echo "$built" | head -n 1
