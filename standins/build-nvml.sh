#!/bin/sh
# Builds the NVML stand-in: OUTDIR/libnvidia-ml.so.1 (default OUTDIR: standins/build).
# Use it by putting OUTDIR first in LD_LIBRARY_PATH before the program starts, with
# GENV_FAKE_MACHINE naming the description of the simulated machine (see fake_nvml.c).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/build"}
mkdir -p "$out"
${CC:-cc} -O2 -Wall -Wextra -shared -fPIC -pthread -fvisibility=hidden \
    -o "$out/libnvidia-ml.so.1" "$here/libnvidia-ml/fake_nvml.c"
echo "$out/libnvidia-ml.so.1"
