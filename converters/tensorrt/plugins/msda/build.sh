#!/usr/bin/env bash
# Build the TensorRT MSDA plugin with CMake: bash build.sh [TENSORRT_ROOT]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="${1:-${TENSORRT_ROOT:-}}"
cmake -S "$here" -B "$here/build" ${root:+-DTENSORRT_ROOT="$root"}
cmake --build "$here/build" -j"$(nproc)"
echo "built: $here/build/libedgedet_trt_msda.so"
