#!/usr/bin/env bash
# The GPU path in one command (about 5-8 minutes on a GPU machine; needs CUDA PyTorch and nvcc,
# not TensorRT): builds the CUDA MSDA extension, runs its tests against the `pytorch`
# implementation, times it at benches/msda.py's shapes, and trains DINO a few steps with AMP.
# Prints a table, then one JSON line. Exit status: 0 all checks passed, 1 a check failed,
# 2 no CUDA. Options are scripts/gpu_check.py's (--help); --dry-run needs no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ " $* " != *" --dry-run "* && " $* " != *" --help "* && " $* " != *" -h "* ]]; then
  command -v nvcc >/dev/null 2>&1 || [[ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]] || {
    echo "gpu_check: nvcc not found; install the CUDA toolkit (or set CUDA_HOME) to build the CUDA MSDA extension" >&2
    exit 2
  }
fi
exec "$PY" scripts/gpu_check.py "$@"
