"""`edgedet demo` as a new user first runs it: the embedded detector on the whole camera-like demo
video must keep its accuracy, draw confident boxes, and score hidden slivers neither way."""
from __future__ import annotations

import json

import numpy as np
import pytest

from converters.demo import run_demo
from converters.demo_video import drawn_scores, match_accuracy
from runtime import Detections


def _dets(boxes, scores, labels) -> Detections:
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.asarray(labels, np.int64), class_names=["circle", "square", "triangle"], image_size=(360, 640))


def test_ignored_objects_are_neither_found_nor_missed():
    frames = [[{"box_xyxy": [10, 10, 60, 60], "label": 0},
               {"box_xyxy": [0, 100, 12, 140], "label": 1, "ignore": True}]]  # a sliver at the border
    found_both = match_accuracy(frames, {0: _dets([[10, 10, 60, 60], [0, 100, 12, 140]], [0.9, 0.8], [0, 1])}, 3)
    found_one = match_accuracy(frames, {0: _dets([[10, 10, 60, 60]], [0.9], [0]), }, 3)
    assert found_both["mAP50"] == found_one["mAP50"] == pytest.approx(1.0)


def test_drawn_scores_summarise_what_is_drawn():
    per_frame = {0: _dets([[0, 0, 9, 9]] * 3, [0.9, 0.6, 0.1], [0, 1, 2]), 1: _dets([[0, 0, 9, 9]], [0.7], [0])}
    out = drawn_scores(per_frame, 0.5)
    assert out == {"draw_threshold": 0.5, "drawn_score_median": pytest.approx(0.7), "drawn_per_frame": 1.5}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    # a missing embedded model fails here with run_demo's own one-line error (how to recreate it)
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, frames=150)


def test_demo_meets_its_targets_on_the_camera_like_video(demo):
    out, summary = demo
    acc = summary["accuracy"]
    assert acc["frames_scored"] == 150
    assert acc["mAP50"] >= MAP50_FLOOR and acc["mAP"] >= MAP_FLOOR, acc
    assert acc["drawn_score_median"] >= 0.5 and acc["draw_threshold"] >= 0.25, acc  # confident boxes; the best-F1 threshold no lower than the fallback
    assert json.loads((out / "summary.json").read_text())["accuracy"] == acc
    assert (out / "contact_sheet.png").stat().st_size > 10_000 and (out / "annotated.mp4").stat().st_size > 10_000


# The embedded model scores mAP@0.5 0.951 / mAP 0.792 here (OpenVINO fused, 2026-12-02): these floors
# are the demo issue's targets.
MAP50_FLOOR, MAP_FLOOR = 0.90, 0.70
