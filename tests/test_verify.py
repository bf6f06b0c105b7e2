"""verify(): artifact through runtime.Detector vs PyTorch on the same preprocessed images."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from converters import export, verify
from converters.calibration import calibration_batches, preprocess_bgr, read_bgr
from converters.verify import format_report, iou_matrix, match_stats, topk_agreement
from export_helpers import build_tiny, write_images
from runtime.manifest import PreprocessSpec

HW = (64, 96)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("imgs"), n=3, seed=7)


@pytest.mark.parametrize("postprocess", [True, False], ids=["topk", "raw"])
def test_verify_onnx_report(tmp_path, images, postprocess):
    model = build_tiny("tiny_msda")
    path = export(model, "onnx", tmp_path / "m.onnx", imgsz=HW, msda="grid_sample", postprocess=postprocess, simplify=False)
    report = verify(path, model, images, repeats=2)
    assert report["images"] == 3 and report["backend"] == "onnxruntime"
    assert report["topk_match"] == 1.0
    assert report["score_max_abs_diff"] < 1e-4 and report["box_max_abs_diff_px"] < 1e-2
    if not postprocess:
        assert report["prob_max_abs_diff"] < 1e-4 and report["box_cxcywh_max_abs_diff"] < 1e-4
    assert report["latency_artifact"]["mean_ms"] > 0 and report["latency_pytorch"]["mean_ms"] > 0
    saved = json.loads((tmp_path / "m.verify.json").read_text())
    assert saved["topk_match"] == report["topk_match"]
    assert "topk_match" in format_report(report)


def test_verify_detects_a_different_model(tmp_path, images):
    model = build_tiny("tiny_msda")
    path = export(model, "onnx", tmp_path / "m.onnx", imgsz=HW, msda="grid_sample", simplify=False)
    other = build_tiny("tiny_msda")
    with torch.no_grad():
        other.bbox_embed[2].bias.add_(0.5)  # every box moves: the report must say so
    report = verify(path, other, images, repeats=1)
    assert report["topk_match"] < 0.5


def test_calibration_uses_runtime_preprocessing(images):
    spec = PreprocessSpec(size=HW)
    frame = read_bgr(sorted(images.iterdir())[0])
    from runtime.preprocess import Preprocessor

    np.testing.assert_array_equal(preprocess_bgr(frame, spec), Preprocessor(spec)(frame)[0][0])
    batches = calibration_batches(images, spec, limit=2)
    assert len(batches) == 2 and set(batches[0]) == {"images"}  # a PreprocessSpec: the one image input
    assert batches[0]["images"].shape == (1, 3) + HW and batches[0]["images"].dtype == np.float32


def test_match_stats():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32)
    ref = {"labels": np.array([0, 1]), "boxes": boxes, "scores": np.array([0.9, 0.5], np.float32)}
    same = match_stats(ref, dict(ref))
    assert same == {"match": 1.0, "box": 0.0, "score": 0.0}
    relabel = match_stats(ref, {**ref, "labels": np.array([1, 1])})
    assert relabel["match"] == 0.5
    np.testing.assert_allclose(iou_matrix(boxes, boxes + np.float32(5))[0, 0], 25 / 175)


def test_verify_map_on_dataset(tmp_path, images):
    data = pytest.importorskip("edgedet.data")
    from edgedet.config import DataConfig

    cfg = DataConfig(format="synthetic", root=str(tmp_path / "syn"), synthetic_val_images=4, synthetic_image_size=96)
    dataset = data.build_dataset(cfg, "val")
    model = build_tiny("tiny_msda")
    path = export(model, "onnx", tmp_path / "m.onnx", imgsz=HW, msda="grid_sample", simplify=False)
    report = verify(path, model, images, eval_dataset=dataset, repeats=1)
    assert report["eval_images"] == 4
    assert abs(report["map_delta"]) < 1e-3 and report["map_artifact"] == pytest.approx(report["map_pytorch"], abs=1e-3)


def test_cli_export_and_verify(tmp_path, images, capsys):
    from edgedet.cli import main

    from export_helpers import SHARED

    ckpt = SHARED / "fixtures" / "reference" / "deformable_detr" / "checkpoint.pth"
    if not ckpt.is_file():
        pytest.skip(f"{ckpt} is not present")
    out = tmp_path / "dd.onnx"
    code = main(["export", "--model", str(ckpt), "--format", "onnx", "--imgsz", "64", "96", "--msda", "gather",
                 "--output", str(out), "--verify", "--images", str(images)])
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file() and f"exported {out}" in printed
    report = json.loads((tmp_path / "dd.verify.json").read_text())
    assert report["topk_match"] == 1.0 and report["msda"] == "gather" and "topk_match" in printed


def test_topk_agreement_is_the_mean_share_of_reference_detections_matched():
    box = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32)
    ref = {"labels": np.array([0, 1]), "boxes": box, "scores": np.array([0.9, 0.8], np.float32)}
    same = dict(ref)
    relabelled = {**ref, "labels": np.array([0, 2])}  # the second detection changes class: unmatched
    assert topk_agreement([ref, ref], [same, relabelled]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="one candidate per reference"):
        topk_agreement([ref], [])


def test_equal_degenerate_boxes_match():
    """Zero-area boxes (clipped to an image edge) have IoU 0/0: equal ones are still the same detection, a moved one is not."""
    box = np.array([[0, 0, 10, 10], [30, 288, 50, 288], [5, 5, 5, 9]], np.float32)  # two of zero area
    ref = {"labels": np.array([0, 1, 2]), "boxes": box, "scores": np.array([0.9, 0.8, 0.7], np.float32)}
    assert topk_agreement([ref], [dict(ref)]) == 1.0
    moved = {**ref, "boxes": box + np.array([[0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], np.float32)}
    assert topk_agreement([ref], [moved]) == pytest.approx(2 / 3)
