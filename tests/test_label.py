"""`edgedet label`: the embedded prompted model labels a rendered camera-world clip from one box per class.

The clip (24 frames, 360x640) has exact ground truth from the renderer; the prompts are the largest
whole object of each class on frame 0. The model is exported to ONNX once per session (~40 s on a
loaded 2-core box); each labelling run is a few seconds.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from converters.demo import render_world_clip
from converters.demo_prompted import PROMPTED_CHECKPOINT, default_prompt_boxes
from converters.label_export import export_for_labelling
from runtime.commands.label import main as label_main
from runtime.label import LabelConfig, LabelOutputError, label

FRAMES = 24
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(export folder, clip, per-frame ground truth, prompt boxes, prompt names)."""
    tmp = tmp_path_factory.mktemp("label")
    encoder, detector = export_for_labelling(PROMPTED_CHECKPOINT, tmp / "cache")
    clip = tmp / "clip.mp4"
    gt = render_world_clip(clip, FRAMES, seed=11)
    boxes, names = default_prompt_boxes(gt[0])
    return detector.parent, clip, gt, boxes, names


def _box_args(boxes, names):
    return ["--boxes", *[",".join(f"{v:.0f}" for v in b) for b in boxes], "--names", *names]


def _gt_coco(path: Path, gt, frames, names) -> Path:
    """Ground truth of `frames` as a COCO JSON named as the data set names frames (clip_<frame:06d>.jpg)."""
    images, anns = [], []
    for f in frames:
        images.append({"id": f + 1, "file_name": f"clip_{f:06d}.jpg", "width": 640, "height": 360})
        for o in gt[f]:
            if o["ignore"]:
                continue
            x0, y0, x1, y1 = o["box_xyxy"]
            anns.append({"id": len(anns) + 1, "image_id": f + 1, "category_id": names.index(o["name"]) + 1,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}))
    return path


def _iou(a, b) -> float:
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.clip(rb - lt, 0, None).prod()
    return float(inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter))


def precision_recall(out: Path, gt, names, frames) -> tuple:
    """P and R at IoU 0.5 of the written YOLO labels against the renderer's truth; a box on an `ignore`
    object (mostly out of view) counts neither way, as COCO crowd regions do."""
    tp = fp = n_gt = 0
    for f in frames:
        split = "val" if (out / "labels" / "val" / f"clip_{f:06d}.txt").is_file() else "train"
        lines = (out / "labels" / split / f"clip_{f:06d}.txt").read_text().split("\n")
        preds = []
        for line in filter(None, lines):
            c, cx, cy, w, h = line.split()
            cx, cy, w, h = float(cx) * 640, float(cy) * 360, float(w) * 640, float(h) * 360
            preds.append((names[int(c)], np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])))
        targets = [(o["name"], np.array(o["box_xyxy"]), o["ignore"]) for o in gt[f]]
        n_gt += sum(not ig for _, _, ig in targets)
        taken = set()
        for name, box in preds:
            best, j = max(((_iou(box, t[1]), k) for k, t in enumerate(targets) if t[0] == name and k not in taken),
                          default=(0.0, -1))
            if best >= 0.5:
                taken.add(j)
                tp += not targets[j][2]
            else:
                fp += 1
    return tp / max(tp + fp, 1), tp / max(n_gt, 1)


def test_labels_match_the_renderer_truth(world, tmp_path, capsys):
    model, clip, gt, boxes, names = world
    out = tmp_path / "ds"
    gt_file = _gt_coco(tmp_path / "gt.json", gt, range(1, 6), names)  # a few labelled frames choose the threshold
    assert label_main(["--model", str(model), "--source", str(clip), "--output", str(out), *_box_args(boxes, names),
                       "--gt", str(gt_file), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == FRAMES and summary["threshold_source"].startswith("best F1")
    p, r = precision_recall(out, gt, names, range(1, FRAMES))
    assert p >= 0.8 and r >= 0.8, (p, r)
    # the files a trainer and a reviewer read
    assert (out / "data.yaml").read_text().splitlines()[:3] == ["path: .", "train: images/train", "val: images/val"]
    assert len(list((out / "images").rglob("*.jpg"))) == FRAMES == len(list((out / "labels").rglob("*.txt")))
    coco = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == names and len(coco["images"]) == FRAMES
    assert len(coco["annotations"]) == sum(summary["boxes_per_class"].values())
    assert all(a["score"] >= summary["threshold"] for a in coco["annotations"])
    scores = [s for p in (out / "scores").glob("*.json") for s in json.loads(p.read_text())["scores"]]
    assert min(scores) < summary["threshold"] and len(scores) > len(coco["annotations"])  # the sidecar keeps more
    assert (out / "contact_sheet.png").stat().st_size > 10_000
    assert "boxes: " in capsys.readouterr().out

    # re-threshold from the sidecar: nothing runs again, fewer boxes, the same images
    again = label(LabelConfig(model=str(model), sources=[str(clip)], output=str(out), boxes=[",".join(map(str, b)) for b in boxes.tolist()],
                              names=names, conf=0.6, quiet=True))
    assert again["labelled_now"] == 0 and again["resumed"] == FRAMES and again["threshold"] == 0.6
    assert sum(again["boxes_per_class"].values()) < sum(summary["boxes_per_class"].values())
    assert len(list((out / "images").rglob("*"))) == FRAMES + 2  # two split folders, no copies


def test_killed_torch_free_run_resumes_without_duplicates(world, tmp_path):
    model, clip, gt, boxes, names = world
    out = tmp_path / "ds"
    argv = ["--model", str(model), "--source", str(clip), "--output", str(out), *_box_args(boxes, names), "--quiet"]
    # torch-free: labelling with exported artifacts runs with torch, edgedet and converters unimportable
    blocked = "import sys\nfor m in ('torch', 'torchvision', 'edgedet', 'converters'):\n    sys.modules[m] = None\n"
    cmd = [sys.executable, "-c", blocked + f"from runtime.commands.label import main\nmain({argv!r})"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "scores").is_dir() and len(list((out / "scores").glob("*.json"))) >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    first = len(list((out / "scores").glob("*.json")))
    assert 4 <= first < FRAMES
    summary = label(LabelConfig(model=str(model), sources=[str(clip)], output=str(out),
                                boxes=[",".join(f"{v:.0f}" for v in b) for b in boxes], names=names, quiet=True))
    assert summary["resumed"] == first and summary["labelled_now"] == FRAMES - first and summary["images"] == FRAMES
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if ".tmp" in p.name]
    for sub, suffix in (("images", ".jpg"), ("labels", ".txt"), ("scores", ".json")):
        stems = [p.stem for p in (out / sub).rglob(f"*{suffix}")]
        assert sorted(stems) == sorted(set(stems)) and len(stems) == FRAMES, sub


def test_refuses_a_folder_it_did_not_write_and_other_prompts(world, tmp_path):
    model, clip, gt, boxes, names = world
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    cfg = dict(model=str(model), sources=[str(clip)], boxes=[",".join(f"{v:.0f}" for v in b) for b in boxes], names=names,
               quiet=True)
    with pytest.raises(LabelOutputError, match="did not write"):
        label(LabelConfig(output=str(mine), **cfg))
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "ds"
    label(LabelConfig(output=str(out), every=8, **cfg))
    with pytest.raises(LabelOutputError, match="other prompts"):
        label(LabelConfig(output=str(out), every=8, **{**cfg, "names": names[::-1]}))
    with pytest.raises(ValueError, match="no prompts"):
        label(LabelConfig(model=str(model), sources=[str(clip)], output=str(tmp_path / "x"), quiet=True))
    with pytest.raises(FileNotFoundError, match="no images .* or videos"):
        label(LabelConfig(output=str(tmp_path / "y"), **{**cfg, "sources": [str(mine)]}))
    from runtime.commands.predict import predict

    with pytest.raises(ValueError, match="predict --ray takes images"):  # before Ray or the model is touched
        predict(str(model / "trex-detector.onnx"), str(clip), ray="local")


def test_a_checkpoint_is_exported_into_the_output_cache_through_the_plugin(world, tmp_path, monkeypatch):
    """--model CHECKPOINT.pth: the `prompted_export` plug-in (converters.label_export, exercised by the fixture)
    exports into DATASET/.cache; here it hands back the fixture's export after creating that cache folder."""
    import runtime.label.engine as engine

    model, clip, gt, boxes, names = world
    calls = []

    def fake_plugin(name, needs, extra):
        assert name == "prompted_export" and extra == "convert"

        def export(checkpoint, cache):
            calls.append((Path(checkpoint), Path(cache)))
            (Path(cache) / "model").mkdir(parents=True)
            return model / "trex-prompt-encoder.onnx", model / "trex-detector.onnx"
        return export

    monkeypatch.setattr(engine, "plugin", fake_plugin)
    out = tmp_path / "ds"
    summary = label(LabelConfig(model=str(PROMPTED_CHECKPOINT), sources=[str(clip)], output=str(out), every=12, quiet=True,
                                boxes=[",".join(f"{v:.0f}" for v in b) for b in boxes], names=names))
    assert calls == [(PROMPTED_CHECKPOINT, out / ".cache")] and summary["images"] == 2
    with pytest.raises(ValueError, match="--prompt-encoder goes with an exported detector"):
        engine.find_artifacts(str(PROMPTED_CHECKPOINT), str(model / "trex-prompt-encoder.onnx"), tmp_path)


def test_the_labelled_set_trains_one_epoch(world, tmp_path):
    pytest.importorskip("torch")
    from edgedet.cli import main as cli_main

    model, clip, gt, boxes, names = world
    out = tmp_path / "ds"
    label(LabelConfig(model=str(model), sources=[str(clip)], output=str(out), every=2,
                      boxes=[",".join(f"{v:.0f}" for v in b) for b in boxes], names=names, quiet=True))
    rc = cli_main(["train", "--data", str(out / "data.yaml"), "--model", "dfine", "--epochs", "1", "--imgsz", "256",
                   "--batch-size", "4", "--output", str(tmp_path / "train"), "--no-progress"])
    assert rc == 0 and (tmp_path / "train" / "last.pth").is_file()
    metrics = [json.loads(x) for x in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["iters"] >= 2 and np.isfinite(metrics[0]["train_loss"])


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_ray_local_cluster_writes_what_one_process_writes(world, tmp_path):
    """One local Ray cluster (started and stopped by ray_cluster, as `--ray` does) for label and predict."""
    pytest.importorskip("ray.data", reason="the ray extra is not installed (pip install 'edgedet[ray]')")
    import cv2

    from runtime.commands.predict import predict
    from runtime.label.ray_runner import ray_cluster
    from runtime.testing import BLOB_BGR, make_blob_artifact

    model, clip, gt, boxes, names = world
    photos = tmp_path / "photos"  # image files too: read by Ray Data's read_binary_files
    photos.mkdir()
    cap = cv2.VideoCapture(str(clip))
    for i in range(3):
        ok, frame = cap.read()
        cv2.imwrite(str(photos / f"photo{i}.png"), frame)
    cap.release()
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    cfg = dict(model=str(model), sources=[str(clip), str(photos)], every=3, quiet=True,
               boxes=[",".join(f"{v:.0f}" for v in b) for b in boxes], names=names)
    blob = make_blob_artifact(tmp_path / "blob")
    shots = tmp_path / "shots"
    shots.mkdir()
    for i in range(5):
        image = np.zeros((120, 160, 3), np.uint8)
        image[10 + 8 * i:50 + 8 * i, 20:70] = BLOB_BGR[i % 3]
        cv2.imwrite(str(shots / f"s{i}.png"), image)

    here = label(LabelConfig(output=str(tmp_path / "here"), **cfg))
    p_here = predict(str(blob), str(shots), save_txt=True, project=str(tmp_path / "p_here"), quiet=True)
    t0 = time.perf_counter()
    with ray_cluster("local") as ray:
        started = time.perf_counter() - t0
        there = label(LabelConfig(output=str(tmp_path / "ray"), ray="local", actors=2, **cfg))
        p_ray = predict(str(blob), str(shots), save_txt=True, project=str(tmp_path / "p_ray"), quiet=True, ray="local", actors=2)
    assert not ray.is_initialized()
    print(f"Ray local cluster start: {started:.1f} s")

    assert there["runner"] == "ray" and there["images"] == here["images"] == FRAMES // 3 + 3
    assert there["unreadable"] == here["unreadable"] == 1
    assert there["boxes_per_class"] == here["boxes_per_class"] and sum(here["boxes_per_class"].values()) > 0
    a, b = _files(tmp_path / "here"), _files(tmp_path / "ray")
    sub = lambda files, top: {k: v for k, v in files.items() if k.split("/")[0] == top}  # noqa: E731
    assert sorted(a) == sorted(b)
    assert sub(a, "images") == sub(b, "images") and sub(a, "labels") == sub(b, "labels")  # the same bytes
    for key in sub(a, "scores"):
        ra, rb = json.loads(a[key]), json.loads(b[key])
        assert ra["labels"] == rb["labels"] and np.allclose(ra["scores"], rb["scores"], atol=1e-3), key
    assert json.loads(a["annotations.json"]) == json.loads(b["annotations.json"])

    assert p_ray["images"] == p_here["images"] == 5 and p_ray["objects"] == p_here["objects"] >= 5
    pa, pb = _files(Path(p_here["dir"])), _files(Path(p_ray["dir"]))
    assert sorted(pa) == sorted(pb)
    for key in pa:
        if key.endswith(".json"):
            ja, jb = json.loads(pa[key]), json.loads(pb[key])
            if isinstance(ja, dict):  # per image: timings_ms differ from run to run
                ja.pop("timings_ms"), jb.pop("timings_ms")
            assert ja == jb, key
        elif key.endswith(".txt"):
            assert pa[key] == pb[key], key
