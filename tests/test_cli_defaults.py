"""One set of defaults: predict, run, track, val and the live view use the manifest's threshold and duplicate
filter unless --conf / --dedup-iou say otherwise, and say once which they use."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedet.cli import main
from runtime.manifest import Manifest, OutputSpec, PreprocessSpec, write_sidecar

# Fixed detections whatever the image: scores around a recommended threshold of 0.4, and a near-copy
# (IoU ~0.9) of the best box that the manifest's duplicate filter drops.
BOXES = [[10, 10, 50, 40], [60, 20, 100, 70], [70, 5, 120, 30], [12, 11, 51, 41], [5, 60, 40, 90]]
SCORES = [0.9, 0.5, 0.3, 0.45, 0.1]
LABELS = [0, 1, 0, 0, 1]


def constant_artifact(folder: Path, threshold: float = 0.4, dedup_iou=0.7) -> Path:
    """An ONNX graph that ignores its image and returns BOXES/SCORES/LABELS (postprocessed layout)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h, w = 96, 128
    consts = {"labels": np.array([LABELS], np.int64), "boxes": np.array([BOXES], np.float32),
              "scores": np.array([SCORES], np.float32)}
    nodes, inits = [helper.make_node("ReduceMax", ["images"], ["m"], keepdims=0)], []
    for name, value in consts.items():  # output = constant + 0 * max(image), so the input is used
        inits.append(numpy_helper.from_array(value, f"{name}_c"))
        cast = helper.make_node("Cast", ["m"], [f"m_{name}"], to=TensorProto.INT64 if name == "labels" else TensorProto.FLOAT)
        zero = helper.make_node("Mul", [f"m_{name}", f"zero_{name}"], [f"z_{name}"])
        inits.append(numpy_helper.from_array(np.zeros((), value.dtype), f"zero_{name}"))
        nodes += [cast, zero, helper.make_node("Add", [f"{name}_c", f"z_{name}"], [name])]
    graph = helper.make_graph(
        nodes, "constant", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info("labels", TensorProto.INT64, [1, 5]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 5, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "const.onnx"
    onnx.save(model, str(path))
    manifest = Manifest(family="const", class_names=["a", "b"], preprocess=PreprocessSpec(size=(h, w), resize="stretch"),
                        outputs=OutputSpec(top_k=5, score_threshold=threshold, score_threshold_source="best F1 on 8 val images",
                                           dedup_iou=dedup_iou))
    write_sidecar(manifest, path)
    return path


@pytest.fixture()
def scene(tmp_path):
    image = np.full((96, 128, 3), 90, np.uint8)
    cv2.imwrite(str(tmp_path / "img.png"), image)
    return constant_artifact(tmp_path / "m"), tmp_path / "img.png"


def _boxes(detections):
    return sorted((d["name"], round(d["score"], 3), tuple(round(v) for v in d["box_xyxy"])) for d in detections)


def test_predict_run_and_track_draw_the_same_boxes_by_default(scene, tmp_path, capsys):
    model, image = scene
    project = str(tmp_path / "runs")
    assert main(["predict", "--model", str(model), "--source", str(image), "--project", project]) == 0
    predicted = _boxes(json.loads((tmp_path / "runs" / "predict" / "1" / "img.json").read_text())["detections"])
    assert main(["run", "--model", str(model), "--source", str(image), "--json", str(tmp_path / "run.jsonl"),
                 "--save", str(tmp_path / "run.png"), "--quiet"]) == 0
    ran = _boxes(json.loads((tmp_path / "run.jsonl").read_text().splitlines()[0])["detections"])
    assert main(["track", "--model", str(model), "--source", str(image), "--project", project]) == 0
    tracked = _boxes(json.loads((tmp_path / "runs" / "track" / "1" / "img.jsonl").read_text().splitlines()[0])["detections"])
    # Threshold 0.4 and IoU 0.7 from the manifest: 0.9 and 0.5 drawn; 0.45 is a copy of the 0.9 box.
    assert predicted == ran == tracked
    assert [s for _, s, _ in predicted] == [0.9, 0.5] or sorted(s for _, s, _ in predicted) == [0.5, 0.9]
    err = capsys.readouterr().err
    assert "score threshold 0.4 (the manifest's recommendation: best F1 on 8 val images)" in err
    assert "duplicate filter IoU 0.7 (the manifest's recommendation" in err
    # The annotated images of predict and run are the same picture.
    a = cv2.imread(str(tmp_path / "runs" / "predict" / "1" / "img.png"))
    b = cv2.imread(str(tmp_path / "run.png"))
    assert a is not None and b is not None and np.array_equal(a, b)


def test_conf_and_dedup_iou_override_everywhere_with_the_same_names(scene, tmp_path, capsys):
    model, image = scene
    project = str(tmp_path / "runs")
    args = ["--conf", "0.2", "--dedup-iou", "0"]
    assert main(["predict", "--model", str(model), "--source", str(image), "--project", project, *args]) == 0
    predicted = _boxes(json.loads((tmp_path / "runs" / "predict" / "1" / "img.json").read_text())["detections"])
    assert main(["run", "--model", str(model), "--source", str(image), "--json", str(tmp_path / "r.jsonl"), "--quiet", *args]) == 0
    ran = _boxes(json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])["detections"])
    assert main(["track", "--model", str(model), "--source", str(image), "--project", project, *args]) == 0
    tracked = _boxes(json.loads((tmp_path / "runs" / "track" / "1" / "img.jsonl").read_text().splitlines()[0])["detections"])
    assert predicted == ran == tracked and len(predicted) == 4  # 0.9, 0.5, 0.45 (no filter), 0.3
    err = capsys.readouterr().err
    assert "score threshold 0.2 (--conf); duplicate filter off (--dedup-iou)" in err


def test_track_thresholds_follow_the_manifest_for_a_low_scoring_model(tmp_path):
    """A model whose scores sit around 0.4 is tracked (the old fixed 0.5/0.6 tracked nothing)."""
    from runtime.commands.track import track

    model = constant_artifact(tmp_path / "m", threshold=0.35, dedup_iou=None)
    from runtime.testing import make_blob_video

    make_blob_video(tmp_path / "v.avi")
    s = track(str(model), str(tmp_path / "v.avi"), project=str(tmp_path / "runs"), quiet=True, max_frames=5)
    assert s["tracks"] == 3  # 0.9, 0.5 and 0.45 (>= 0.35) each start a track; 0.3 and 0.1 do not
    s = track(str(model), str(tmp_path / "v.avi"), project=str(tmp_path / "runs"), quiet=True, max_frames=5,
              tracker_options={"new": 0.8})
    assert s["tracks"] == 1


def test_val_confusion_matrix_uses_the_manifest_threshold(tmp_path):
    from runtime.testing import make_blob_artifact, make_blob_dataset
    from runtime.val import val

    model = make_blob_artifact(tmp_path / "m")  # scores 0.9
    sidecar = Path(str(model) + ".edgedet.json")
    data = json.loads(sidecar.read_text())
    data["outputs"]["score_threshold"] = 0.95  # above every score: the matrix counts no detection
    sidecar.write_text(json.dumps(data))
    ann = make_blob_dataset(tmp_path / "data", 4)
    m = val(str(model), str(ann), project=str(tmp_path / "runs"), quiet=True, plots=False)
    assert m["confusion_conf"] == pytest.approx(0.95)
    assert m["mAP50"] == pytest.approx(1.0)  # mAP is still scored over every detection
    cm = np.array(m["confusion_matrix"])
    assert cm[:3, :3].sum() == 0 and cm[3].sum() == m["instances"]  # all missed at 0.95
    m = val(str(model), str(ann), project=str(tmp_path / "runs"), quiet=True, plots=False, conf=0.5)
    assert np.array(m["confusion_matrix"])[:3, :3].trace() == m["instances"]


def test_manifest_dedup_iou_round_trips_and_is_omitted_when_unset(tmp_path):
    m = Manifest(outputs=OutputSpec(dedup_iou=0.6))
    assert Manifest.from_json(m.to_json()).outputs.dedup_iou == 0.6
    assert "dedup_iou" not in Manifest().to_json()  # older runtimes still read artifacts without one
    from runtime.manifest import ManifestError

    bad = json.loads(m.to_json())
    bad["outputs"]["dedup_iou"] = 1.5
    with pytest.raises(ManifestError, match="dedup_iou"):
        Manifest.from_dict(bad)


def test_export_stores_a_recommended_dedup_iou_the_runtime_uses(tmp_path):
    from converters import export
    from converters.formats import ExportError
    from export_helpers import build_tiny
    from runtime import Detector
    from runtime.manifest import read_sidecar

    path = export(build_tiny("tiny_msda"), "onnx", tmp_path / "m.onnx", imgsz=(64, 96), msda="grid_sample",
                  simplify=False, score_threshold=0.3, dedup_iou=0.7)
    assert read_sidecar(path).outputs.dedup_iou == 0.7
    with Detector(path) as det:
        assert det.postprocessor.dedup_iou == 0.7 and "duplicate filter IoU 0.7 (the manifest's" in det.defaults_note
    with Detector(path, dedup_iou=0) as det:
        assert det.postprocessor.dedup_iou is None
    with pytest.raises(ExportError, match="dedup_iou must be in"):
        export(build_tiny("tiny_msda"), "onnx", tmp_path / "n.onnx", imgsz=(64, 96), dedup_iou=1.5)
