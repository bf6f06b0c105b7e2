"""Every example runs with small settings (CI), and bad input ends in one line, not a traceback.

The torch-free examples run as a user runs them (a subprocess); convert_and_run runs in-process on a tiny
checkpoint trained here (its family is registered by the test), so its export takes seconds.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.testing import make_blob_artifact, make_blob_video
from script_loader import load_script

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _run(tmp_path, script, *args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def blob(tmp_path):
    make_blob_video(tmp_path / "v.avi")
    return make_blob_artifact(tmp_path / "m"), tmp_path / "v.avi"


def test_camera_demo_and_embed_in_app_on_a_video(tmp_path, blob):
    model, video = blob
    p = _run(tmp_path, "camera_demo.py", "--model", model, "--source", video, "--save", tmp_path / "out.mp4")
    assert p.returncode == 0, p.stderr
    assert "20 frames" in p.stdout and (tmp_path / "out.mp4").stat().st_size > 0
    p = _run(tmp_path, "embed_in_app.py", "--model", model, "--source", video)
    assert p.returncode == 0, p.stderr
    assert "red: 20 detections" in p.stdout


def test_count_vehicles_with_a_model_and_without_the_shared_video(tmp_path, blob):
    model, video = blob
    p = _run(tmp_path, "count_vehicles.py", "--source", video, "--model", model, "--line", 64, 0, 64, 96)
    assert p.returncode == 0, p.stderr
    counts = json.loads((tmp_path / "runs" / "count_vehicles" / "1" / "counts.json").read_text())
    assert counts["total"] == 1 and counts["tracks"] == 1  # the one moving rectangle, tracked and counted
    p = _run(tmp_path, "count_vehicles.py", "--source", tmp_path / "no_such.mp4")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("count_vehicles.py: error: source not found") and len(p.stderr.strip().splitlines()) == 1


def test_count_vehicles_default_video_missing_is_one_line(tmp_path, monkeypatch, capsys):
    module = load_script(EXAMPLES / "count_vehicles.py", "count_vehicles_example")
    monkeypatch.setattr(module, "VIDEO", tmp_path / "shared" / "car-detection.mp4")
    monkeypatch.setattr(sys, "argv", ["count_vehicles.py", "--source", str(module.VIDEO)])
    with pytest.raises(FileNotFoundError, match="pass --source VIDEO_FILE or a camera index"):
        module.main()


def test_jetson_csi_without_gstreamer_ends_in_one_line(tmp_path, blob):
    model, _ = blob
    p = _run(tmp_path, "jetson_csi.py", "--model", model, "--device", "CPU", "--json", tmp_path / "d.jsonl")
    if p.returncode == 0:
        pytest.skip("this machine has a CSI camera through GStreamer")
    assert "Traceback" not in p.stderr and p.stderr.strip().startswith("jetson_csi.py: error:")
    assert len(p.stderr.strip().splitlines()) == 1


def test_convert_and_run_takes_the_input_size_from_the_checkpoint_and_writes_under_runs(tmp_path, monkeypatch, capsys):
    import cv2
    import numpy as np

    from test_engine import _cfg, _datasets  # the tiny detector (registered on import) and its shapes
    from edgedet.engine.trainer import train
    from runtime.manifest import read_sidecar

    ckpt = train(_cfg(tmp_path / "train", epochs=1, eval_every=0), progress=False, datasets=_datasets())
    image = tmp_path / "img.jpg"
    cv2.imwrite(str(image), np.full((120, 160, 3), 100, np.uint8))
    monkeypatch.chdir(tmp_path)
    module = load_script(EXAMPLES / "convert_and_run.py", "convert_and_run_example")
    monkeypatch.setattr(sys, "argv", ["convert_and_run.py", "--checkpoint", str(ckpt), "--image", str(image)])
    module.main()
    out = tmp_path / "runs" / "convert_and_run" / "1"
    artifact = out / (ckpt.stem + ".onnx")
    from edgedet.engine.checkpoint import load_checkpoint
    from converters.export_defaults import default_imgsz

    expected, _ = default_imgsz(load_checkpoint(ckpt)["config"])
    assert tuple(read_sidecar(artifact).preprocess.size) == tuple(expected) != (640, 640)
    assert (out / "detections_img.jpg").is_file() and not (tmp_path / "exported").exists()
    assert "score threshold" in capsys.readouterr().out


def test_convert_and_run_bad_paths_are_one_line(tmp_path):
    p = _run(tmp_path, "convert_and_run.py", "--checkpoint", "runs/dd/last.pth", "--image", tmp_path / "none.jpg")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip() == f"convert_and_run.py: error: cannot read image {tmp_path / 'none.jpg'}: missing or not an image"
    image = tmp_path / "img.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    p = _run(tmp_path, "convert_and_run.py", "--checkpoint", "runs/dd/last.pth", "--image", image, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "checkpoint not found: runs/dd/last.pth" in p.stderr


def test_readme_export_snippet_fails_before_any_work_with_one_message(tmp_path, monkeypatch):
    """README's `export("runs/dd/last.pth", ..., calib="path/to/images")` names what is missing at once: the
    checkpoint, then (given one) the calibration folder, before the threshold search and the export."""
    from converters import export
    from converters.formats import ExportError
    from export_helpers import build_tiny
    import converters.export_defaults

    with pytest.raises(ExportError, match="checkpoint not found: runs/dd/last.pth"):
        export("runs/dd/last.pth", format="openvino", precision="int8", msda="fused", calib="path/to/images")

    def no_work(*args, **kwargs):
        raise AssertionError("the export started before the calibration path was checked")

    monkeypatch.setattr(converters.export_defaults, "recommend_threshold", no_work)
    with pytest.raises(ExportError, match="calibration source path/to/images is neither"):
        export(build_tiny("tiny_msda"), format="onnx", output=tmp_path / "q.onnx", precision="int8",
               msda="grid_sample", calib="path/to/images", imgsz=(64, 96))


@pytest.mark.slow  # exports the embedded prompted detector (~1 min on a busy machine)
def test_visual_prompt_export_and_run(tmp_path):
    from runtime.testing import make_blob_video

    p = _run(tmp_path, "visual_prompt.py", "export", "--out", tmp_path / "art", "--imgsz", 128, 224, timeout=600)
    assert p.returncode == 0, p.stderr
    video = tmp_path / "clip.avi"
    make_blob_video(video)
    p = _run(tmp_path, "visual_prompt.py", "run", "--artifacts", tmp_path / "art", "--image", tmp_path / "none.png",
             "--box", "1,1,5,5", "--video", video, "--save", tmp_path / "o.mp4")
    assert p.returncode == 1 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
