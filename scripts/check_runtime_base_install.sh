#!/usr/bin/env bash
# The runtime on the base install alone: a fresh venv with only `pip install .` (numpy, OpenCV,
# onnxruntime, pyyaml, tqdm, lap, pycocotools; no torch, no onnx) must load an ONNX artifact and
# detect, and `edgedet predict / val / track / benchmark` must work on it; training and export
# commands must answer with one line naming the extra to install.
# BASE_PYTHON: the Python of that venv (default: the oldest found of 3.8 (JetPack 5's) / 3.10 (JetPack 6's),
# else PYTHON): its base install and commands really run on it. PYTHON writes the test inputs (needs onnx).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -z "${BASE_PYTHON:-}" ]; then
  for v in 3.8 3.10; do
    found=$(ls -d "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/$v.*/bin/python$v 2>/dev/null | tail -1 || true)
    if [ -n "$found" ]; then BASE_PYTHON=$found; break; fi
    # (a pyenv shim answers `command -v` without running: ask the interpreter itself)
    if found=$("python$v" -c 'import sys; print(sys.executable)' 2>/dev/null); then BASE_PYTHON=$found; break; fi
  done
fi
BASE_PYTHON=${BASE_PYTHON:-$PY}
echo "base install on $("$BASE_PYTHON" -c 'import platform, sys; print("Python", platform.python_version(), "at", sys.executable)')"
# A fresh temporary folder per run (never a fixed path another user or run may hold), removed at exit.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/edgedet-base-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
VENV=$WORK/venv
ART=$WORK/artifact
mkdir -p "$ART"
"$BASE_PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e .
# The artifact, a labelled dataset and a video are written here, by the full environment (writing ONNX needs onnx).
"$PY" -c "
from runtime.testing import make_blob_artifact, make_blob_dataset, make_blob_video
make_blob_artifact('$ART'); make_blob_dataset('$ART/data'); make_blob_video('$ART/clip.avi')"
"$VENV/bin/python" - "$ART" <<'PYEOF'
import importlib.util, sys
from pathlib import Path

for heavy in ("torch", "onnx"):
    assert importlib.util.find_spec(heavy) is None, f"{heavy} must not come with the base install"
import numpy as np
from runtime import Detector

artifact = next(Path(sys.argv[1]).glob("*.onnx"))
frame = np.zeros((240, 320, 3), np.uint8)
frame[60:120, 100:200] = (0, 0, 255)  # a red rectangle (BGR)
dets = Detector(artifact)(frame)
assert "red" in dets.names, dets.to_dict()
box = dets.boxes_xyxy[dets.names.index("red")]
assert np.allclose(box, [100, 60, 200, 120], atol=3), box
assert "torch" not in sys.modules
print(f"runtime base install on Python {sys.version.split()[0]}: OK ({len(dets)} detections, red box {box.round(1).tolist()}, no torch)")
PYEOF
E="$VENV/bin/edgedet"
cd "$ART"
"$E" predict --model blob.onnx --source data --save-txt --quiet
test -f runs/predict/1/im0.json
test -f runs/predict/1/labels/im0.txt
test -f runs/predict/1/predictions.json
"$E" val --model blob.onnx --data data/instances.json --quiet | tee val.txt
grep -qE "^all +6 +[0-9]+ +1\.000" val.txt
"$E" track --model blob.onnx --source clip.avi --line 80 0 80 120 --anchor center --quiet
grep -q '"tracks": 1' runs/track/1/counts.json
# (one command per line: `set -e` does not stop at a failure inside an && list)
"$E" benchmark --model blob.onnx --quick --iters 5 --quiet > bench.txt
tail -1 bench.txt | grep -q p50_ms
for cmd in train export; do
  if out=$("$E" $cmd --model x 2>&1); then echo "edgedet $cmd should fail without torch"; exit 1; fi
  echo "$out" | grep -q "pip install 'edgedet\[" || { echo "edgedet $cmd: no install hint: $out"; exit 1; }
done
echo "edgedet predict / val / track / benchmark on the base install: OK; train / export name their extra"
