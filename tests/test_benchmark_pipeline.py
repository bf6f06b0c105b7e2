"""`edgedet benchmark`'s pipeline figures (runtime.commands.benchmark_pipeline): capture -> draw per engine."""
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from runtime.commands.benchmark import COLUMNS, benchmark, format_table
from runtime.commands.benchmark_pipeline import PIPELINE_COLUMNS, draw_threshold, render_source, time_pipelines
from runtime.testing import make_blob_artifact
from runtime.types import Detections


class FakeDetector:
    """Fixed stage timings; one box scoring 0.9 and one 0.1; records the frames it is given."""

    def __init__(self, threshold=None):
        self.manifest = SimpleNamespace(outputs=SimpleNamespace(score_threshold=threshold))
        self.shapes = []

    def __call__(self, image):
        self.shapes.append(image.shape)
        return Detections(np.array([[10, 10, 60, 60], [100, 100, 200, 150]], np.float32), [0.9, 0.1], [0, 1],
                          ("a", "b"), image.shape[:2], timings_ms={"preprocess": 2.0, "infer": 8.0, "postprocess": 1.0})


def _frames(n, hw=(1080, 1920)):
    return [np.full(hw + (3,), 40 * i, np.uint8) for i in range(n)]


def test_pipeline_stages_fps_and_preprocess_share(tmp_path):
    folder = render_source(tmp_path / "src", _frames(3))
    a, b = FakeDetector(), FakeDetector(0.05)
    got = time_pipelines({"a": a, "b": b}, folder, iters=5)  # 5 rounds over 3 frames: the source is reopened
    assert set(got) == {"a", "b"}
    for row in got.values():
        assert set(row) == set(PIPELINE_COLUMNS) - {"input_format"}
        assert (row["preprocess_ms"], row["infer_ms"], row["postprocess_ms"]) == (2.0, 8.0, 1.0)
        assert row["pre_vs_infer"] == 0.25
        assert row["capture_ms"] > 0 and row["draw_ms"] > 0
        assert row["pipeline_fps"] > 0
    assert a.shapes == b.shapes and len(a.shapes) == 1 + 5 and set(a.shapes) == {(1080, 1920, 3)}


def test_draw_threshold_follows_the_manifest():
    assert draw_threshold(FakeDetector(0.4)) == 0.4
    assert draw_threshold(FakeDetector(None)) == 0.25
    assert draw_threshold(object()) == 0.25


def test_a_source_without_frames_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        time_pipelines({"a": FakeDetector()}, tmp_path / "empty", iters=1)


def test_benchmark_rows_carry_pipeline_figures(tmp_path):
    model = make_blob_artifact(tmp_path / "m")
    src = render_source(tmp_path / "src", _frames(2, (720, 1280)))
    result = benchmark(str(model), iters=3, project=str(tmp_path / "runs"), quiet=True, source=str(src))
    row = result["rows"][0]
    assert set(PIPELINE_COLUMNS) <= set(COLUMNS) and row["input_format"] == "float32_nchw"
    assert row["infer_ms"] > 0 and row["preprocess_ms"] > 0 and row["capture_ms"] > 0 and row["pipeline_fps"] > 0
    assert row["pre_vs_infer"] == pytest.approx(row["preprocess_ms"] / row["infer_ms"], abs=1e-3)
    assert "pipeline per frame, capture -> draw" in format_table(result)
    # the default source: a rendered 1080p clip written into the run folder
    result = benchmark(str(model), iters=2, project=str(tmp_path / "runs"), quiet=True)
    clip = sorted((tmp_path / "runs" / "benchmark").glob("*/pipeline_source/*.jpg"))
    assert clip and cv2.imread(str(clip[0])).shape == (1080, 1920, 3)
    assert result["rows"][0]["pipeline_fps"] > 0
