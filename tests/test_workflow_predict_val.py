"""`edgedet predict` and `edgedet val` on the toy ONNX artifact: files, COCO results, metrics, bad input."""
import json

import cv2
import numpy as np
import pytest

from edgedet.cli import main
from runtime.commands.predict import predict
from runtime.datasets import DatasetError, load_dataset
from runtime.testing import BLOB_BGR as COLOURS
from runtime.testing import make_blob_artifact, make_blob_dataset
from runtime.val import val


def _coco_dataset(folder, n=6, seed=0, names=("red", "green", "blue")):
    return make_blob_dataset(folder, n, seed, names)


def test_predict_folder_mixed_sizes_grayscale_and_a_text_file(tmp_path, capsys):
    model = make_blob_artifact(tmp_path / "m")
    src = tmp_path / "imgs"
    src.mkdir()
    a = np.zeros((240, 320, 3), np.uint8)
    a[60:120, 100:200] = COLOURS[0]
    cv2.imwrite(str(src / "a.jpg"), a)
    g = np.zeros((500, 300), np.uint8)
    g[100:300, 50:250] = 255  # grayscale: white = all three channels
    cv2.imwrite(str(src / "gray.png"), g)
    (src / "notes.txt").write_text("not an image")
    summary = predict(str(model), str(src), save_txt=True, project=str(tmp_path / "runs"))
    out = capsys.readouterr().out
    assert "skip" in out and "notes.txt" in out and "image 2/2 gray.png 300x500" in out
    run = tmp_path / "runs" / "predict" / "1"
    assert summary["dir"] == str(run) and summary["images"] == 2 and summary["skipped"] == 1
    rec = json.loads((run / "a.json").read_text())
    assert rec["file_name"] == "a.jpg" and (rec["height"], rec["width"]) == (240, 320)
    assert rec["detections"][0]["name"] == "red"
    assert np.allclose(rec["detections"][0]["box_xyxy"], [100, 60, 200, 120], atol=1)
    gray = json.loads((run / "gray.json").read_text())
    assert gray["file_name"] == "gray.png" and sorted(d["name"] for d in gray["detections"]) == ["blue", "green", "red"]
    assert (run / "a.jpg").is_file() and (run / "gray.png").is_file()
    # YOLO label: class cx cy w h normalised
    cls, *vals = (run / "labels" / "a.txt").read_text().split()
    assert cls == "0" and np.allclose([float(v) for v in vals], [150 / 320, 90 / 240, 100 / 320, 60 / 240], atol=1e-3)
    # A second run gets a fresh folder; the COCO results load with pycocotools against the images' ids.
    predict(str(model), str(src / "*.jpg"), project=str(tmp_path / "runs"), quiet=True)
    assert (tmp_path / "runs" / "predict" / "2" / "a.json").is_file()


def test_predict_coco_results_use_dataset_ids_and_load_in_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    model = make_blob_artifact(tmp_path / "m")
    ann = _coco_dataset(tmp_path / "data")
    summary = predict(str(model), str(tmp_path / "data"), data=str(ann), project=str(tmp_path / "runs"), quiet=True)
    gt = COCO(str(ann))
    res = gt.loadRes(str(tmp_path / "runs" / "predict" / "1" / "predictions.json"))
    assert summary["images"] == 6 and len(res.getAnnIds()) == len(gt.getAnnIds())
    assert {a["image_id"] for a in res.dataset["annotations"]} <= set(gt.getImgIds())
    assert {a["category_id"] for a in res.dataset["annotations"]} <= {7, 8, 9}


def test_val_scores_the_toy_detector_and_draws_plots(tmp_path):
    model = make_blob_artifact(tmp_path / "m")
    ann = _coco_dataset(tmp_path / "data", n=8)
    m = val(str(model), str(ann), project=str(tmp_path / "runs"), quiet=True)
    # The toy detector finds every rectangle exactly (up to letterbox rounding): mAP@0.5 is 1.
    assert m["mAP50"] == pytest.approx(1.0) and m["mAP"] > 0.8
    assert set(m["per_class"]) == {"red", "green", "blue"} and m["images"] == 8
    cm = np.array(m["confusion_matrix"])
    assert cm[:3, :3].trace() == m["instances"] and cm[3].sum() == 0  # nothing missed
    run = tmp_path / "runs" / "val" / "1"
    for name in ("pr_curve.png", "confusion_matrix.png"):
        img = cv2.imread(str(run / name))
        assert img is not None and img.std() > 10
    assert json.loads((run / "metrics.json").read_text())["mAP50"] == m["mAP50"]


def test_val_one_line_errors(tmp_path, capsys):
    model = make_blob_artifact(tmp_path / "m")
    ann = _coco_dataset(tmp_path / "data", names=("red", "green", "cyan"))
    assert main(["val", "--model", str(model), "--data", str(ann), "--project", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "do not match" in err and "cyan" in err and "blue" in err and len(err.splitlines()) == 1
    (tmp_path / "m" / "weights.bin").write_bytes(b"x")
    assert main(["val", "--model", str(tmp_path / "m" / "weights.bin"), "--data", str(ann)]) == 2
    assert "unknown model file kind" in capsys.readouterr().err
    voc = tmp_path / "voc"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    with pytest.raises(DatasetError, match="split 'test' not found.*train"):
        load_dataset(voc, "test")
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--model", str(model), "--source", str(tmp_path / "empty")]) == 2
    assert "is empty" in capsys.readouterr().err
    (tmp_path / "empty" / "a.txt").write_text("x")
    assert main(["predict", "--model", str(model), "--source", str(tmp_path / "empty"), "--project", str(tmp_path / "r2")]) == 2
    assert "no images in" in capsys.readouterr().err and not (tmp_path / "r2").exists()


def test_val_reads_voc_with_the_models_class_order(shared):
    ds = load_dataset(shared / "data" / "bccd", "test").aligned_to(["RBC", "WBC", "Platelets"])
    assert ds.class_names == ["RBC", "WBC", "Platelets"] and len(ds) == 72
    assert set(np.concatenate([s.labels for s in ds.records]).tolist()) == {0, 1, 2}


def test_predict_on_a_video_writes_json_lines_and_a_video(tmp_path):
    from runtime.testing import make_blob_video

    model = make_blob_artifact(tmp_path / "m")
    video = make_blob_video(tmp_path / "clip.avi", frames=8)
    s = predict(str(model), str(video), save_txt=True, project=str(tmp_path / "runs"), quiet=True)
    run = tmp_path / "runs" / "predict" / "1"
    lines = [json.loads(x) for x in (run / "clip.jsonl").read_text().splitlines()]
    assert s["images"] == 8 and [r["frame"] for r in lines] == list(range(8))
    assert all(r["detections"][0]["name"] == "red" for r in lines) and lines[0]["file_name"] == "clip_0"
    assert (run / "clip.mp4").stat().st_size > 0 and len(list((run / "labels").glob("clip_*.txt"))) == 8


def test_run_dirs_are_fresh_numbered_folders(tmp_path):
    from runtime.paths import next_run_dir

    assert next_run_dir(tmp_path, "predict") == tmp_path / "predict" / "1"
    (tmp_path / "predict" / "7").mkdir()
    (tmp_path / "predict" / "notes").mkdir()
    assert next_run_dir(tmp_path, "predict") == tmp_path / "predict" / "8"
    assert next_run_dir(tmp_path, "predict") == tmp_path / "predict" / "9"
