"""`export --verify` ends with a verdict per engine (PASS/WARN/FAIL and the limits used); INT8 is judged by its
mAP delta, never by top-K agreement alone; the calibration line says how many images were used of how many."""
import json

import pytest

from converters.verify import verdict


def _report(precision="fp32", score=1e-5, box=1e-3, match=1.0, **extra):
    return {"backend": "openvino", "precision": precision, "msda": "fused", "score_max_abs_diff": score,
            "box_max_abs_diff_px": box, "topk_match": match, **extra}


def test_verdicts_name_the_engine_and_the_limits_used():
    line = verdict(_report())
    assert line.startswith("verdict openvino fp32 msda fused: PASS") and "score <= 0.001" in line
    assert verdict(_report(score=5e-3)).startswith("verdict openvino fp32 msda fused: WARN")
    assert verdict(_report(match=0.5)).split("\n")[0].endswith("FAIL")
    assert verdict(_report("fp16", score=0.01, box=1.5, match=0.997)).split("\n")[0].endswith("PASS")


def test_int8_is_judged_by_its_map_delta_not_by_top_k_agreement():
    healthy = _report("int8", score=0.2, box=30.0, match=0.526, map_artifact=0.153, map_pytorch=0.155,
                      map_delta=-0.002, eval_images=72)
    line = verdict(healthy)
    assert line.split("\n")[0].endswith("PASS") and "-0.0020" in line and "int8 tolerance 0.02" in line
    assert "agreement" not in line
    broken = dict(healthy, map_artifact=0.05, map_delta=-0.105)
    assert verdict(broken).split("\n")[0].endswith("FAIL")
    unjudged = verdict(_report("int8", match=0.526))
    assert unjudged.split("\n")[0].endswith("WARN") and "--data" in unjudged


def test_calib_synthetic_calibrates_on_the_generated_images_and_says_how_many(tmp_path, monkeypatch, caplog):
    import logging

    from converters.calibration import calibration_batches
    from converters.cli import _calib_source
    from runtime.manifest import Manifest, PreprocessSpec

    monkeypatch.setenv("EDGEDET_CACHE", str(tmp_path / "cache"))
    source = _calib_source("synthetic", {})
    assert type(source).__name__ == "DataConfig" and source.format == "synthetic"
    manifest = Manifest(preprocess=PreprocessSpec(size=(64, 96)))
    with caplog.at_level(logging.INFO, logger="converters.calibration"):
        batches = calibration_batches(source, manifest, limit=4)
    assert len(batches) == 4 and batches[0]["images"].shape == (1, 3, 64, 96)
    assert "calibrating on 4 of 50 images (46 more available: --calib-images 50 uses them all)" in caplog.text
    assert manifest.extra["calibration"] == {"images": 4, "available": 50}


@pytest.mark.slow  # an INT8 export and its verify: ~1 min on a busy 2-core machine
def test_cli_int8_export_with_synthetic_calibration_says_how_many_images_and_the_verdict(tmp_path, capsys, monkeypatch):
    from edgedet.cli import main
    from export_helpers import SHARED, write_images

    ckpt = SHARED / "fixtures" / "reference" / "deformable_detr" / "checkpoint.pth"
    if not ckpt.is_file():
        pytest.skip(f"{ckpt} is not present")
    monkeypatch.setenv("EDGEDET_CACHE", str(tmp_path / "cache"))
    images = write_images(tmp_path / "imgs", n=2, seed=3)
    out = tmp_path / "q.onnx"
    code = main(["export", "--model", str(ckpt), "--format", "onnx", "--precision", "int8", "--imgsz", "64", "96",
                 "--msda", "gather", "--calib", "synthetic", "--calib-images", "4", "--output", str(out),
                 "--verify", "--images", str(images), "--score-threshold", "0.3", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "calibrated on 4 of 50 images (46 more available: --calib-images 50)" in printed
    assert "verdict onnxruntime int8 msda gather: WARN" in printed and "--data" in printed
    assert "topk_match " not in printed  # --quiet: the report table is in q.verify.json only
    assert json.loads((tmp_path / "q.verify.json").read_text())["precision"] == "int8"
