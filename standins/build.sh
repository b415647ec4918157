#!/bin/sh
# Builds the stand-ins into OUTDIR (default: standins/build): libnvidia-ml.so.1 (NVML) and
# nvidia-smi. Needs a C compiler (CC, default cc). Each file is compiled to a temporary name
# and renamed into place, so programs running the old one, or a second build, are unharmed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/build"}
mkdir -p "$out"
cc=${CC:-cc}
flags="-O2 -Wall -Wextra -Wformat=2 -pthread"
common="$here/common/machine.c"

$cc $flags -shared -fPIC -fvisibility=hidden -o "$out/.libnvidia-ml.so.1.$$" \
    "$here/libnvidia-ml/fake_nvml.c" "$common"
mv -f "$out/.libnvidia-ml.so.1.$$" "$out/libnvidia-ml.so.1"

$cc $flags -o "$out/.nvidia-smi.$$" "$here/smi/nvidia_smi.c" "$common"
mv -f "$out/.nvidia-smi.$$" "$out/nvidia-smi"

echo "$out/libnvidia-ml.so.1"
echo "$out/nvidia-smi"
