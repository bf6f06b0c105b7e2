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


def test_openvino_verify_reports_bf16_and_records_what_passed(tmp_path, images, monkeypatch):
    pytest.importorskip("openvino")
    from converters.verify import bf16_parity
    from runtime.manifest import read_sidecar
    from runtime.precision import CHECKS_KEY, Capability

    model = build_tiny("tiny_msda")
    path = export(model, "openvino", tmp_path / "m.xml", imgsz=HW, msda="gather", simplify=False)
    # A CPU without native bf16 (this AVX2 one, mocked so the test means the same everywhere): untested, never passed
    monkeypatch.setattr("runtime.precision.cpu_bf16_capability", lambda core: Capability(False, "no AMX-BF16 (mocked)"))
    report = verify(path, model, images, repeats=1, time_pytorch=False, record=True)
    assert report["precision_checks"] == {"fp32": "passed", "bf16": "untested"}
    assert report["bf16"]["reason"] == "not measurable on this CPU: no AMX-BF16 (mocked)" and "topk_match" not in report["bf16"]
    assert "bf16.status" in format_report(report)
    checks = read_sidecar(path).extra[CHECKS_KEY]
    assert checks["fp32"]["status"] == "passed" and checks["fp32"]["topk_match"] == 1.0
    assert checks["bf16"] == {"status": "untested", "reason": "not measurable on this CPU: no AMX-BF16 (mocked)"}
    # A bf16 CPU (mocked) whose plugin compiles the request at f32 (as this one does) is still untested, never passed;
    # where the plugin really runs bf16 the figures are measured and judged.
    capable = Capability(True, "the CPU has AMX-BF16 (mocked)")
    from converters.onnx.export import DeployModel

    man = read_sidecar(path)
    deploy = DeployModel(model.eval(), postprocess=True, top_k=man.outputs.top_k, preprocess=man.preprocess).eval()
    frames = [read_bgr(p) for p in sorted(images.glob("*.jpg"))]
    bf16 = bf16_parity(path, deploy, frames, capability=capable)
    if bf16["status"] == "untested":
        assert "compiled the bf16 request at f32" in bf16["reason"]
    else:  # a CPU whose plugin runs bf16: measured and judged
        assert bf16["status"] in ("passed", "failed") and 0.0 <= bf16["topk_match"] <= 1.0
