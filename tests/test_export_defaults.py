"""Export defaults from the checkpoint: input size, output folder, recommended score threshold used by
the runtime, and argument checks that come before the slow export."""
import json

import numpy as np
import pytest

import _tiny_detector  # noqa: F401  (registers the tiny test model)
from converters.export_defaults import default_imgsz
from edgedet.cli import main
from edgedet.engine.threshold import FALLBACK_THRESHOLD, best_f1_threshold
from runtime.manifest import sidecar_path


def test_best_f1_threshold_picks_the_cut_of_best_f1():
    gt = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([0, 1]))]
    dets = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [0, 0, 10, 10]], float),
             np.array([0, 1, 0, 0]),            # the last one duplicates the first: a false positive
             np.array([0.9, 0.4, 0.6, 0.3]))]
    best = best_f1_threshold(dets, gt)
    # cuts: 0.9 -> P1 R.5 F.667; 0.6 -> P.5 R.5; 0.4 -> P.667 R1 F.8; 0.3 -> P.5 R1 F.667
    assert best["threshold"] == pytest.approx(0.4)
    assert best["f1"] == pytest.approx(0.8)
    assert best_f1_threshold([(np.zeros((0, 4)), np.zeros(0), np.zeros(0))], gt)["threshold"] == FALLBACK_THRESHOLD


def test_default_imgsz_follows_the_training_config(shared):
    assert default_imgsz({"data": {"format": "synthetic", "val_size": 128, "max_size": 200}})[0] == (128, 128)
    assert default_imgsz({})[0] == (640, 640)
    # BCCD: 640x480 images, shorter side 384 -> 384x512 (the README's export size for this recipe)
    bccd = {"data": {"format": "voc", "root": str(shared / "data" / "bccd"), "val_size": 384, "max_size": 560}}
    assert default_imgsz(bccd)[0] == (384, 512)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    data = tmp / "data.yaml"
    data.write_text("data:\n  format: synthetic\n  root: syn\n  synthetic_train_images: 4\n  synthetic_val_images: 6\n"
                    "  synthetic_image_size: 96\n  scales: [96]\n  val_size: 96\n  max_size: 96\n")
    argv = ["train", "--model", "tiny_test", "--data", str(data), "--epochs", "1", "--batch-size", "2",
            "--output", str(tmp / "run"), "--set", "model.hidden_dim=16", "--set", "model.num_queries=5", "--no-progress"]
    assert main(argv) == 0
    return tmp / "run" / "last.pth"


def test_export_defaults_come_from_the_checkpoint(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--model", str(tiny_checkpoint), "--format", "onnx"]) == 0
    arts = list((tmp_path / "runs" / "export").rglob("*.onnx"))
    assert len(arts) == 1, arts  # into runs/export/<run>-<stem>/, not the working directory
    assert arts[0].parent.name == "run-last"
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.json"))
    manifest = json.loads(sidecar_path(arts[0]).read_text())
    assert manifest["preprocess"]["size"] == [96, 96]  # the training scale, not 640
    out = manifest["outputs"]
    assert out["score_threshold_source"].startswith("best F1"), out
    assert 0.0 < out["score_threshold"] <= 1.0

    from runtime import Detector

    det = Detector(arts[0])
    assert det.conf == pytest.approx(out["score_threshold"])  # used when the user gives none
    scene = (np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8)
    assert all(s >= out["score_threshold"] for s in det(scene).scores)
    assert Detector(arts[0], conf=0.0).conf == 0.0
    # `edgedet run` without --conf uses it too (and says so in its first line)
    capsys.readouterr()
    import cv2

    cv2.imwrite(str(tmp_path / "img.png"), scene)
    assert main(["run", "--model", str(arts[0]), "--source", str(tmp_path / "img.png")]) == 0
    assert f"conf={out['score_threshold']:.3g}" in capsys.readouterr().err


def test_explicit_threshold_and_imgsz_are_kept_and_verify_finds_images(tiny_checkpoint, tmp_path, caplog, capsys):
    import logging

    out = tmp_path / "m.onnx"
    with caplog.at_level(logging.INFO):
        assert main(["export", "--model", str(tiny_checkpoint), "--imgsz", "64", "128", "--score-threshold", "0.42",
                     "--output", str(out), "--verify"]) == 0  # no --images: the checkpoint's validation images
    assert "verifying on synthetic:val images" in caplog.text
    assert capsys.readouterr().out.count("topk_match") == 1  # the report table once
    assert json.loads((tmp_path / "m.verify.json").read_text())["images"] == 6
    manifest = json.loads(sidecar_path(tmp_path / "m.onnx").read_text())
    assert manifest["preprocess"]["size"] == [64, 128]
    assert manifest["outputs"]["score_threshold"] == 0.42 and manifest["outputs"]["score_threshold_source"] == "given"


@pytest.mark.parametrize("extra,needle", [
    (["--verify", "--images", "no/such/folder"], "--images no/such/folder"),
    (["--verify", "--dry-run", "--format", "tensorrt"], "--dry-run"),
    (["--calib", "no/such/folder", "--precision", "int8"], "--calib no/such/folder"),
    (["--images", "x"], "only by --verify"),
])
def test_export_arguments_are_checked_before_the_model_loads(extra, needle, monkeypatch, capsys, tmp_path):
    import converters.api

    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(converters.api, "resolve_model", must_not_load)
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--model", "whatever.pth", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
