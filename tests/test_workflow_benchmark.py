"""`edgedet benchmark` on existing artifacts (torch-free path) and its deviation measure; the new commands without torch."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from runtime.commands.benchmark import COLUMNS, benchmark, deviation
from runtime.testing import make_blob_artifact, make_blob_dataset
from runtime.types import Detections

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_artifacts_round_robin_with_map(tmp_path):
    a = make_blob_artifact(tmp_path / "a", name="post")
    b = make_blob_artifact(tmp_path / "b", layout="sigmoid", name="raw", dynamic_batch=True)
    ann = make_blob_dataset(tmp_path / "data")
    result = benchmark([str(a), str(b)], data=str(ann), iters=4, project=str(tmp_path / "runs"), quiet=True)
    rows = result["rows"]
    assert [r["format"] for r in rows] == ["onnxruntime", "onnxruntime"] and all(not r["skipped"] for r in rows)
    assert all(r["p50_ms"] > 0 and r["p95_ms"] >= r["p50_ms"] and r["size_mb"] > 0 for r in rows)
    assert rows[0]["batch"] == 1 and rows[1]["batch"] == 16  # static vs dynamic batch: largest that runs
    assert all(r["mAP50"] == 1.0 for r in rows)  # the toy detector finds every rectangle
    run = Path(result["dir"])
    assert json.loads((run / "results.json").read_text())["rows"][0]["p50_ms"] == rows[0]["p50_ms"]
    assert (run / "results.csv").read_text().splitlines()[0].split(",")[: len(COLUMNS)] == COLUMNS


def test_deviation_is_order_free_and_reports_missing_boxes():
    ref = Detections(np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32), [0.9, 0.5], [0, 1])
    same = Detections(ref.boxes_xyxy[::-1] + 0.5, [0.5, 0.9], [1, 0])
    assert deviation([ref], [same]) == {"score_dev": 0.0, "box_dev_px": 0.5}
    wrong_class = Detections(ref.boxes_xyxy, [0.9, 0.4], [0, 0])
    d = deviation([ref], [wrong_class])
    assert d["score_dev"] == 0.1 and d["box_dev_px"] == float("inf")


def test_new_commands_run_without_torch(tmp_path):
    model = make_blob_artifact(tmp_path)
    ann = make_blob_dataset(tmp_path / "data")
    script = textwrap.dedent(f"""
        import sys
        for name in ("torch", "torchvision", "onnx", "scipy", "matplotlib"):
            sys.modules[name] = None  # any import of them now raises ImportError
        from edgedet.cli import main
        assert main(["predict", "--model", {str(model)!r}, "--source", {str(tmp_path / "data")!r}, "--quiet",
                     "--project", {str(tmp_path / "r")!r}]) == 0
        assert main(["val", "--model", {str(model)!r}, "--data", {str(ann)!r}, "--quiet", "--project", {str(tmp_path / "r")!r}]) == 0
        assert main(["export", "--model", "x.pth"]) == 2
        assert main(["predict", "--model", "{tmp_path / 'missing.pth'}", "--source", "."]) == 2
        (__import__("pathlib").Path({str(tmp_path / "m.pth")!r})).write_bytes(b"0")
        assert main(["val", "--model", {str(tmp_path / "m.pth")!r}, "--data", {str(ann)!r}]) == 2
        # converters' command modules load (lazily, torch-free) to print their help and the extra to install
        leaked = sorted(m for m in sys.modules if m.split(".")[0] == "torch" and sys.modules[m] is not None)
        print("leaked", leaked)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "leaked []"
    assert "pip install 'edgedet[convert]'" in out.stderr and "pip install 'edgedet[train]'" in out.stderr
