#!/usr/bin/env bash
# The runtime on the base install alone: a fresh venv with only `pip install .` (numpy, OpenCV,
# onnxruntime, pyyaml, tqdm; no torch, no onnx) must load an ONNX artifact and detect.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# A fresh temporary folder per run (never a fixed path another user or run may hold), removed at exit.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/edgedet-base-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
VENV=$WORK/venv
ART=$WORK/artifact
mkdir -p "$ART"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e .
# The artifact is written here, by the full environment (writing ONNX needs the onnx package).
"$PY" -c "from runtime.testing import make_blob_artifact; make_blob_artifact('$ART')"
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
print(f"runtime base install: OK ({len(dets)} detections, red box {box.round(1).tolist()}, no torch)")
PYEOF
