"""`val` scores a checkpoint and its ONNX / OpenVINO exports alike: same letterbox input, same metrics."""
import dataclasses

import pytest

from converters.demo import DEMO_CHECKPOINT

IMGSZ = (256, 256)  # the demo detector's training scale


def test_checkpoint_detector_declares_the_exports_preprocessing():
    from converters.api import make_manifest
    from edgedet.predictor import checkpoint_manifest, load_checkpoint_model

    model, experiment = load_checkpoint_model(DEMO_CHECKPOINT)
    ours = checkpoint_manifest(model, experiment, (192, 320))
    export = make_manifest(model, "onnxruntime", "fp32", "gather", (192, 320), 1, True, 100, None, experiment)
    assert dataclasses.asdict(ours.preprocess) == dataclasses.asdict(export.preprocess)
    assert ours.class_names == export.class_names and ours.outputs.score_activation == export.outputs.score_activation
    assert ours.outputs.top_k == export.outputs.top_k


def test_unknown_extension_and_imgsz_on_an_artifact_are_refused(tmp_path):
    from runtime.models import load_model
    from runtime.testing import make_blob_artifact

    with pytest.raises(ValueError, match="unknown model file kind"):
        (tmp_path / "m.tflite").write_bytes(b"0")
        load_model(tmp_path / "m.tflite")
    with pytest.raises(ValueError, match="applies to checkpoints"):
        load_model(make_blob_artifact(tmp_path), imgsz=(64, 64))


@pytest.mark.slow
def test_val_checkpoint_onnx_openvino_agree_within_half_a_point(tmp_path):
    from converters import export
    from edgedet.data.synthetic import generate_synthetic
    from runtime.val import val

    ann = generate_synthetic(tmp_path / "data", 24, image_size=256, seed=123)
    runs = str(tmp_path / "runs")
    ckpt = val(str(DEMO_CHECKPOINT), str(ann), imgsz=IMGSZ, project=runs, plots=False, quiet=True)
    onnx = export(DEMO_CHECKPOINT, format="onnx", imgsz=IMGSZ, output=tmp_path / "m.onnx")
    ov = export(DEMO_CHECKPOINT, format="openvino", imgsz=IMGSZ, output=tmp_path / "m.xml")
    scores = {"pytorch": ckpt}
    for name, artifact in (("onnx", onnx), ("openvino", ov)):
        scores[name] = val(str(artifact), str(ann), project=runs, plots=False, quiet=True)
    print({k: (round(v["mAP"], 4), round(v["mAP50"], 4)) for k, v in scores.items()})
    assert ckpt["mAP50"] > 0.3  # a real detector on its own domain: the agreement below is not 0 == 0
    for name in ("onnx", "openvino"):
        assert abs(scores[name]["mAP"] - ckpt["mAP"]) <= 0.005, (name, scores[name]["mAP"], ckpt["mAP"])
        assert abs(scores[name]["mAP50"] - ckpt["mAP50"]) <= 0.005, (name, scores[name]["mAP50"], ckpt["mAP50"])


def test_predict_with_a_checkpoint_goes_through_the_plugin(tmp_path):
    """`predict --model ckpt.pth` loads the CheckpointDetector plug-in and finds the demo detector's shapes."""
    from edgedet.data.synthetic import generate_synthetic
    from edgedet.predictor import CheckpointDetector
    from runtime.commands.predict import predict
    from runtime.models import load_model

    ann = generate_synthetic(tmp_path / "data", 2, image_size=256, seed=5)
    det = load_model(DEMO_CHECKPOINT, imgsz=IMGSZ)
    assert isinstance(det, CheckpointDetector) and det.input_size == IMGSZ and det.class_names == ("circle", "square", "triangle")
    s = predict(str(DEMO_CHECKPOINT), str(tmp_path / "data" / "images"), conf=0.3, imgsz=IMGSZ, data=str(ann),
                project=str(tmp_path / "runs"), quiet=True)
    assert s["images"] == 2 and s["objects"] > 0


def test_export_matrix_lists_every_combination_and_why_some_are_skipped(tmp_path, monkeypatch):
    import importlib.util

    import converters.api
    from converters.benchmark import export_matrix

    made = []

    def fake_export(model, format, precision, imgsz, msda, calib, calib_images, output, experiment):
        made.append((format, precision, msda))
        output.write_bytes(b"0")
        return output

    monkeypatch.setattr(converters.api, "export", fake_export)
    rows = export_matrix(DEMO_CHECKPOINT, tmp_path, IMGSZ, quick=False, calib=None)
    skipped = {(r["format"], r["precision"], r["msda"]): r["skipped"] for r in rows if r["skipped"]}
    assert all("INT8 needs calibration" in why for (f, p, m), why in skipped.items() if p == "int8" and m != "fused")
    # ONNX Runtime has no kernel for the fused node: the format table does not offer that combination
    assert not any(f == "onnx" and m == "fused" for f, _, m in made) and ("onnx", "fp32", "fused") not in skipped
    assert ("openvino", "fp16", "gather") in made and ("onnx", "fp32", "grid_sample") in made
    assert not any(p == "int8" for _, p, _ in made)  # no calibration images: no INT8 export attempted
    if importlib.util.find_spec("tensorrt") is None:
        assert [r["precision"] for r in rows if r["format"] == "tensorrt"] == ["all"]
    quick = export_matrix(DEMO_CHECKPOINT, tmp_path / "q", IMGSZ, quick=True)
    assert [(r["format"], r["precision"]) for r in quick] == [("onnx", "fp32"), ("openvino", "fp32")]
