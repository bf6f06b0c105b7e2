"""Parity of x86-exported artifacts on another CPU (the aarch64 lane of scripts/arm64_check.sh).

  python scripts/arm64_parity.py export DIR   # x86, full install: export the embedded demo detector three
                                              # ways, preprocess two demo frames, save the x86 outputs
  python scripts/arm64_parity.py check DIR --label cortex-a72   # anywhere, torch-free: run the same artifacts
                                              # through runtime's backends, compare with the x86 outputs

`check` prints one line per artifact and, last, one summary line; it exits 1 when an FP32 artifact
differs from x86 by more than the tolerance (scores 1e-4; box corners 1e-4 of the input's longer side).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

IMGSZ = (256, 448)  # the demo's network input
# (file stem, format, msda form, backend that runs it)
ARTIFACTS = (
    ("demo-onnx-grid_sample", "onnx", "grid_sample", "onnxruntime"),
    ("demo-openvino-gather", "openvino", "gather", "openvino"),
    ("demo-openvino-fused", "openvino", "fused", "openvino"),
)
SCORE_TOL = 1e-4
BOX_TOL = 1e-4 * max(IMGSZ)  # pixels of the network input
MIN_SCORE = 0.05  # boxes are compared for the detections the x86 run scores at least this


def _suffix(fmt: str) -> str:
    return ".onnx" if fmt == "onnx" else ".xml"


def export(out: Path) -> None:
    import cv2

    from converters.api import export as export_artifact
    from converters.demo import DEMO_CHECKPOINT
    from converters.demo_video import render_world_clip
    from runtime.manifest import read_sidecar
    from runtime.preprocess import Preprocessor

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, fmt, msda, _ in ARTIFACTS:
        # A given threshold: the manifest's recommended score does not matter for parity.
        paths.append(export_artifact(DEMO_CHECKPOINT, format=fmt, imgsz=IMGSZ, msda=msda, score_threshold=0.25,
                                     output=out / f"{stem}{_suffix(fmt)}", overwrite=True))
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "clip.mp4"
        render_world_clip(video, 6, seed=7)
        cap = cv2.VideoCapture(str(video))
        frames = [cap.read()[1] for _ in range(6)]
    pre = Preprocessor(read_sidecar(paths[0]).preprocess)
    inputs = np.concatenate([pre(frames[i])[0] for i in (0, 5)])
    np.save(out / "inputs.npy", inputs)
    for (stem, _, _, _), outputs in zip(ARTIFACTS, run_all(out)):
        np.savez(out / f"x86-{stem}.npz", **outputs)
    print(f"exported {len(ARTIFACTS)} artifacts, inputs {inputs.shape} and their x86 outputs to {out}")


def run_one(artifact: Path, backend: str, inputs: np.ndarray) -> Dict[str, np.ndarray]:
    from runtime.backends import load_backend
    from runtime.manifest import read_sidecar

    engine = load_backend(artifact, backend, manifest=read_sidecar(artifact))
    try:
        name = engine.input_specs[0].name
        per_frame = [engine.infer({name: inputs[i:i + 1]}) for i in range(len(inputs))]
    finally:
        engine.close()
    return {k: np.concatenate([o[k] for o in per_frame]) for k in per_frame[0]}


def run_all(out: Path) -> List[Dict[str, np.ndarray]]:
    inputs = np.load(out / "inputs.npy")
    return [run_one(out / f"{stem}{_suffix(fmt)}", backend, inputs) for stem, fmt, _, backend in ARTIFACTS]


def _roles(outputs: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores [N, K], boxes [N, K, 4], labels [N, K]) of a postprocessed artifact's outputs."""
    by_shape = {k: v for k, v in outputs.items()}
    boxes = next(v for v in by_shape.values() if v.ndim == 3 and v.shape[-1] == 4)
    scores = next(v for v in by_shape.values() if v.ndim == 2 and v.dtype.kind == "f")
    labels = next(v for v in by_shape.values() if v.ndim == 2 and v.dtype.kind in "iu")
    return scores.astype(np.float64), boxes.astype(np.float64), labels


def compare(ref: Dict[str, np.ndarray], got: Dict[str, np.ndarray]) -> Tuple[float, float, int]:
    """(max score difference, max box-corner difference in px, label mismatches among confident detections).

    Scores are compared sorted (a near-tie that swaps two detections moves neither sorted value by more
    than the perturbation); each confident x86 detection is matched to the nearest box of its label."""
    rs, rb, rl = _roles(ref)
    gs, gb, gl = _roles(got)
    score_diff = float(np.abs(np.sort(rs, axis=1) - np.sort(gs, axis=1)).max())
    box_diff, missing = 0.0, 0
    for n in range(rs.shape[0]):
        for k in np.flatnonzero(rs[n] >= MIN_SCORE):
            same = np.flatnonzero(gl[n] == rl[n, k])
            if same.size == 0:
                missing += 1
                continue
            box_diff = max(box_diff, float(np.abs(gb[n, same] - rb[n, k]).max(axis=1).min()))
    return score_diff, box_diff, missing


def check(out: Path, label: str) -> int:
    inputs = np.load(out / "inputs.npy")
    failed, lines, summary = 0, [], []
    for stem, fmt, msda, backend in ARTIFACTS:
        ref = dict(np.load(out / f"x86-{stem}.npz"))
        short = f"{'ort' if backend == 'onnxruntime' else 'ov'}-{msda}"
        try:
            got = run_one(out / f"{stem}{_suffix(fmt)}", backend, inputs)
        except Exception as e:  # one line, then the other artifacts still run
            failed += 1
            lines.append(f"FAIL {label} {short}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            summary.append(f"{short} FAIL")
            continue
        s, b, missing = compare(ref, got)
        ok = s <= SCORE_TOL and b <= BOX_TOL and missing == 0
        failed += not ok
        lines.append(f"{'ok  ' if ok else 'FAIL'} {label} {short}: scores {s:.1e}, boxes {b:.1e} px"
                     + (f", {missing} confident detections without a same-label box" if missing else ""))
        summary.append(f"{short} {s:.1e}/{b:.1e}px")
    print("\n".join(lines))
    print(json.dumps({"label": label, "failed": failed, "parity": summary}))
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("export", "check"))
    ap.add_argument("dir", type=Path)
    ap.add_argument("--label", default="here", help="names this run in the printed lines (e.g. the CPU model)")
    args = ap.parse_args()
    if args.command == "export":
        export(args.dir)
        return 0
    return check(args.dir, args.label)


if __name__ == "__main__":
    sys.exit(main())
