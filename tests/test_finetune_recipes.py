"""docs/rfdetr.md's fine-tune recipe, one command line per family (DINO, RT-DETRv2, D-FINE, RF-DETR): official
weights -> `edgedet train` -> `edgedet export` -> an engine the torch-free runtime runs. Here on the shared
fixtures (checkpoints in each family's official format) with tiny synthetic data and one step, exported to ONNX
(the recipe's OpenVINO export is the same command with --format openvino)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgedet.cli import main as cli_main

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "reference"
TINY = ["--data", "synthetic", "--epochs", "1", "--batch-size", "2", "--no-progress",
        "--set", "train.max_iters_per_epoch=1", "--set", "train.eval_every=0",
        "--set", "data.synthetic_train_images=2", "--set", "data.synthetic_val_images=1"]


def _updates(folder: str):
    meta = json.loads((REFERENCE / folder / "meta.json").read_text())
    return [a for u in meta["config_updates"] for a in ("--update", u)]


# family -> (fixture folder, the recipe's family-specific flags)
RECIPES = {
    "dino": ("dino", lambda: []),
    "rtdetr": ("rtdetrv2", lambda: ["--config", "rtdetrv2_r18vd", *_updates("rtdetrv2")]),
    "dfine": ("dfine", lambda: ["--config", "dfine_hgnetv2_n_coco", *_updates("dfine")]),
    "rfdetr": ("rfdetr", lambda: ["--imgsz", "384"]),
}


# DINO's line is the slowest (R50 fixture: its export's deployed-view check) and its fine-tune path is covered in
# tests/test_finetune.py: slow here; the real-time families' CLI path from official files runs in CI.
@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f == "dino" else f for f in RECIPES])
def test_recipe_from_official_weights_to_a_running_engine(family, tmp_path):
    folder, flags = RECIPES[family]
    weights = REFERENCE / folder / "checkpoint.pth"
    if not weights.is_file():
        pytest.skip(f"{weights} not available")
    run = tmp_path / "run"
    assert cli_main(["train", "--weights", str(weights), *flags(), *TINY, "--output", str(run)]) == 0
    report = json.loads((run / "load_report.json").read_text())
    counts = report["counts"]  # official weights went in, class heads re-initialised for 3 classes, nothing left out
    assert counts["loaded"] > 100 and counts["reinitialised"] > 0 and counts["missing"] == 0, counts

    artifact = tmp_path / "engine.onnx"
    assert cli_main(["export", "--model", str(run / "best.pth"), "--format", "onnx", "--output", str(artifact)]) == 0

    from runtime import Detector

    detector = Detector(artifact)
    assert detector.manifest.family == family and len(detector.class_names) == 3  # the synthetic data's classes
    frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    dets = detector(frame)
    assert np.isfinite(dets.boxes_xyxy).all() and ((dets.labels >= 0) & (dets.labels < 3)).all()
    assert (dets.boxes_xyxy[:, [0, 2]] <= 320).all() and (dets.boxes_xyxy[:, [1, 3]] <= 240).all()  # in the frame's pixels
