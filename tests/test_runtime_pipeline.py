"""runtime.Pipeline: files lose nothing, live sources stay fresh under a slow detector, every exit joins all threads."""
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import CallbackSink, Detections, Detector, JsonLinesSink, Pipeline, StopPipeline, VideoSink, open_source
from runtime.capture import LiveIteratorSource
from runtime.testing import make_blob_artifact
from interruptible import popen_interruptible

REPO = Path(__file__).resolve().parents[1]


def _coded(i):
    return np.full((48, 64, 3), (i * 8) % 256, np.uint8)


def _edgedet_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("edgedet-")]


def _camera(n, period):
    """A simulated live camera: frame i has grey level 8*i, one every `period` s."""
    for i in range(n):
        time.sleep(period)
        yield _coded(i)


class SlowDetector:
    def __init__(self, delay):
        self.delay, self.seen = delay, []

    def __call__(self, frame):
        self.seen.append(int(round(float(frame.mean()) / 8)))
        time.sleep(self.delay)
        return Detections.empty(("a",), frame.shape[:2])


def test_file_source_processes_every_frame_in_order(tmp_path):
    frames = [np.zeros((120, 160, 3), np.uint8) for _ in range(12)]
    for i, f in enumerate(frames):
        f[10:50, 20 + 5 * i:60 + 5 * i] = (0, 0, 255)  # a red box moving right
    det = Detector(make_blob_artifact(tmp_path))
    got = []
    sinks = [CallbackSink(got.append), JsonLinesSink(tmp_path / "out.jsonl"), VideoSink(tmp_path / "out.avi", fps=10, fourcc="MJPG")]
    stats = Pipeline(iter(frames), det, sinks=sinks, queue_size=2).run()
    assert [r.frame.index for r in got] == list(range(12)) and stats["frames"] == 12 and stats["dropped"] == 0
    x0 = [r.detections.boxes_xyxy[0, 0] for r in got]
    assert np.all(np.diff(x0) > 0)  # results belong to their own frames
    lines = [json.loads(s) for s in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [rec["frame"] for rec in lines] == list(range(12)) and lines[0]["detections"][0]["name"] == "red"
    cap = cv2.VideoCapture(str(tmp_path / "out.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    cap.release()
    assert set(stats["latency_ms"]) >= {"preprocess", "infer", "postprocess", "detect", "end_to_end"}
    assert not _edgedet_threads()


def test_live_source_drops_stale_frames_under_a_slow_detector():
    slow = SlowDetector(0.05)
    pipe = Pipeline(LiveIteratorSource(_camera(100, 0.005)), slow)  # ~200 fps camera, 20 fps detector
    results = list(pipe)
    stats = pipe.stats()
    indices = [r.frame.index for r in results]
    assert indices == sorted(set(indices)) and len(indices) < 60
    assert stats["dropped"] >= 30 and len(indices) + stats["dropped"] == 100
    assert indices[-1] >= 95  # the newest frames reach the detector
    # Bounded latency: a frame waits at most about one detector call before its own.
    assert stats["latency_ms"]["end_to_end"]["p50"] < 4 * 50
    assert not _edgedet_threads()


def test_files_are_not_dropped_under_a_slow_detector(tmp_path):
    slow = SlowDetector(0.01)
    stats = Pipeline((_coded(i) for i in range(15)), slow, queue_size=2).run()
    assert slow.seen == list(range(15)) and stats["dropped"] == 0


def test_close_mid_run_and_early_break_join_all_threads():
    pipe = Pipeline(LiveIteratorSource(_camera(10_000, 0.002)), SlowDetector(0.001))
    for i, _ in enumerate(pipe):
        if i == 5:
            break
    assert not _edgedet_threads()
    pipe = Pipeline(LiveIteratorSource(_camera(10_000, 0.002)), SlowDetector(0.001)).start()
    time.sleep(0.2)
    pipe.close()
    pipe.close()
    assert pipe.stats()["frames"] > 0 and not _edgedet_threads()


def test_errors_propagate_and_stop_everything():
    def broken(frame):
        raise ValueError("model exploded")

    with pytest.raises(ValueError, match="model exploded"):
        Pipeline(LiveIteratorSource(_camera(10_000, 0.002)), broken).run()
    assert not _edgedet_threads()

    def sink(result):
        if result.frame.index == 3:
            raise StopPipeline

    stats = Pipeline((_coded(i) for i in range(50)), SlowDetector(0), sinks=[sink], queue_size=1).run()
    assert stats["frames"] == 3 and not _edgedet_threads()  # frames 0-2; the sink stopped at 3


def test_ctrl_c_stops_cleanly():
    script = textwrap.dedent("""
        import sys, threading, time
        import numpy as np
        from runtime import Detections, Pipeline
        from runtime.capture import LiveIteratorSource
        def camera():
            while True:
                time.sleep(0.005)
                yield np.zeros((8, 8, 3), np.uint8)
        pipe = Pipeline(LiveIteratorSource(camera()), lambda f: Detections.empty())
        print("ready", flush=True)
        try:
            pipe.run()
        except KeyboardInterrupt:
            left = [t.name for t in threading.enumerate() if t.name.startswith("edgedet-")]
            print("interrupted", pipe.stats()["frames"] > 0, left, flush=True)
    """)
    proc = popen_interruptible([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert out.strip() == "interrupted True []"


def test_video_file_pipeline_with_real_detector(tmp_path):
    video = REPO.parent / "shared" / "data" / "videos" / "car-detection.mp4"
    if not video.is_file():
        pytest.skip("shared videos absent")
    det = Detector(make_blob_artifact(tmp_path))
    pipe = Pipeline(open_source(str(video)), det, queue_size=4)
    stats = pipe.run()
    assert stats["frames"] == 377 and stats["dropped"] == 0 and stats["fps"] > 0
