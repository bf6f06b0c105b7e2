"""runtime.MultiStreamPipeline: batched engine calls, per-stream routing, a dying stream never blocks the others."""
import json
import threading
import time

import numpy as np
import pytest

from runtime import Detections, Detector, JsonLinesSink, MultiStreamPipeline, StreamResult
from runtime.capture import LiveIteratorSource, SequentialSource
from runtime.multistream import format_multistream_summary
from runtime.testing import make_blob_artifact


def _frame(stream: int, i: int) -> np.ndarray:
    """A red box whose x position encodes the frame index and whose y position encodes the stream."""
    f = np.zeros((96, 128, 3), np.uint8)
    f[10 + 25 * stream:30 + 25 * stream, 4 + 4 * i:24 + 4 * i] = (0, 0, 255)
    return f


def _frames(stream: int, n: int, fail_after: int = -1):
    for i in range(n):
        if i == fail_after:
            raise RuntimeError("camera unplugged")
        yield _frame(stream, i)


class CountingDetector:
    """Wraps a Detector and records each engine call's batch size."""

    def __init__(self, det, delay=0.0):
        self.det, self.delay, self.sizes = det, delay, []
        self.lock = threading.Lock()

    def batch(self, frames):
        with self.lock:
            self.sizes.append(len(frames))
        time.sleep(self.delay)
        return self.det.batch(frames)


def _edgedet_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("edgedet-")]


def test_three_streams_one_dies_midway_others_complete(tmp_path):
    det = CountingDetector(Detector(make_blob_artifact(tmp_path, dynamic_batch=True)))
    sources = {
        "a": SequentialSource("a", _frames(0, 20)),
        "b": SequentialSource("b", _frames(1, 6, fail_after=5)),  # raises on its 6th frame
        "c": SequentialSource("c", _frames(2, 20)),
    }
    got = {"a": [], "b": [], "c": []}
    sinks = {name: [lambda r, name=name: got[name].append(r)] for name in sources}
    pipe = MultiStreamPipeline(sources, det, sinks=sinks, shared_sinks=[JsonLinesSink(tmp_path / "all.jsonl")], max_wait_ms=20)
    t0 = time.perf_counter()
    stats = pipe.run()
    assert time.perf_counter() - t0 < 30
    # every frame of the healthy streams, in order, each with its own detections
    for name, stream in (("a", 0), ("c", 2)):
        assert [r.frame.index for r in got[name]] == list(range(20))
        for r in got[name]:
            x0, y0 = r.detections.boxes_xyxy[0, :2]
            assert (x0, y0) == (4 + 4 * r.frame.index, 10 + 25 * stream)
            assert isinstance(r, StreamResult) and r.stream == name
    assert [r.frame.index for r in got["b"]] == list(range(5))
    s = stats["streams"]
    assert s["b"]["error"] == "camera unplugged" and s["b"]["processed"] == 5
    for name in sources:  # all frames accounted for
        assert s[name]["read"] == s[name]["processed"] + s[name]["dropped"] + s[name]["unprocessed"]
    assert stats["frames"] == 45
    assert max(det.sizes) == 3 and stats["batch_mean"] > 1.5  # frames of several streams share engine calls
    lines = [json.loads(x) for x in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert len(lines) == 45 and {rec["stream"] for rec in lines} == {"a", "b", "c"}
    assert [rec["frame"] for rec in lines if rec["stream"] == "a"] == list(range(20))
    assert "b" in format_multistream_summary(stats) and not _edgedet_threads()


def test_static_batch_artifact_is_chunked(tmp_path):
    det = Detector(make_blob_artifact(tmp_path))  # batch 1 artifact
    sources = [SequentialSource(f"s{i}", _frames(i, 4)) for i in range(3)]
    got = []
    stats = MultiStreamPipeline(sources, det, shared_sinks=[got.append]).run()
    assert stats["frames"] == 12
    for r in got:
        stream = int(r.stream[-1])
        assert tuple(r.detections.boxes_xyxy[0, :2]) == (4 + 4 * r.frame.index, 10 + 25 * stream)


def test_dead_live_stream_does_not_stall_the_others(tmp_path):
    """A live camera that stops sending frames: the batcher waits at most max_wait_ms for it."""
    det = CountingDetector(Detector(make_blob_artifact(tmp_path, dynamic_batch=True)))

    def camera(stream, n, period, then_hang=0.0):
        for i in range(n):
            time.sleep(period)
            yield _frame(stream, i)
        time.sleep(then_hang)  # alive but silent

    sources = {"live": LiveIteratorSource(camera(0, 30, 0.01)), "stuck": LiveIteratorSource(camera(1, 2, 0.01, then_hang=3.0))}
    got = []
    pipe = MultiStreamPipeline(sources, det, shared_sinks=[got.append], max_wait_ms=5)
    stats = pipe.run(duration_s=1.5)
    live = stats["streams"]["live"]
    assert live["processed"] >= 20  # ~30 frames in 0.3 s; never held back by the silent stream
    assert live["read"] == live["processed"] + live["dropped"] + live["unprocessed"]
    assert live["latency_ms"]["p95"] < 500
    assert not _edgedet_threads()


def test_per_stream_step_and_plain_callable_detector(tmp_path):
    det = Detector(make_blob_artifact(tmp_path))
    seen = []

    def step(stream, frame, dets):
        seen.append((stream, frame.index))
        return dets

    sources = {"x": SequentialSource("x", _frames(0, 3)), "y": SequentialSource("y", _frames(1, 3))}
    stats = MultiStreamPipeline(sources, det.__call__, step=step).run()
    assert stats["frames"] == 6 and sorted(seen) == [("x", 0), ("x", 1), ("x", 2), ("y", 0), ("y", 1), ("y", 2)]


def test_bad_arguments_fail_before_threads_start(tmp_path):
    det = Detector(make_blob_artifact(tmp_path))
    with pytest.raises(ValueError, match="at least one source"):
        MultiStreamPipeline({}, det)
    with pytest.raises(ValueError, match="unknown streams"):
        MultiStreamPipeline({"a": SequentialSource("a", _frames(0, 1))}, det, sinks={"b": []})
    with pytest.raises(FileNotFoundError, match="source not found"):
        MultiStreamPipeline({"a": SequentialSource("a", _frames(0, 1)), "b": str(tmp_path / "missing.mp4")}, det)
    assert not _edgedet_threads()


def test_detections_type_survives_routing(tmp_path):
    det = Detector(make_blob_artifact(tmp_path, dynamic_batch=True))
    pipe = MultiStreamPipeline([SequentialSource("s", _frames(0, 2))], det)
    results = list(pipe)
    assert len(results) == 2 and all(isinstance(r.detections, Detections) for r in results)


def _video(path, stream, n):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 96))
    for i in range(n):
        writer.write(_frame(stream, i))
    writer.release()
    return path


def test_run_cli_several_sources(tmp_path, capsys):
    import cv2

    from runtime.cli import main
    from runtime.multistream_cli import parse_sources

    model = make_blob_artifact(tmp_path, dynamic_batch=True)
    a, b = _video(tmp_path / "front.avi", 0, 8), _video(tmp_path / "back.avi", 1, 5)
    listing = tmp_path / "cams.txt"
    listing.write_text(f"# two cameras\nfront={a}\n\n{b}\n")
    assert list(parse_sources([], str(listing))) == ["front", "back"]
    assert parse_sources(["0", "rtsp://h/x?a=1", "0"], None) == {"cam0": 0, "stream1": "rtsp://h/x?a=1", "cam0_2": 0}
    rc = main(["--model", str(model), "--sources", str(listing), "--json", str(tmp_path / "all.jsonl"),
               "--save", str(tmp_path / "videos"), "--quiet"])
    assert rc == 0
    records = [json.loads(x) for x in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert sorted((r["stream"], r["frame"]) for r in records) == sorted([("front", i) for i in range(8)] + [("back", i) for i in range(5)])
    for name, n in (("front", 8), ("back", 5)):
        cap = cv2.VideoCapture(str(tmp_path / "videos" / f"{name}.mp4"))
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == n
        cap.release()
    assert "front" in capsys.readouterr().out
    # a mosaic video of both streams, by suffix
    assert main(["--model", str(model), "--source", str(a), "--source", str(b), "--save", str(tmp_path / "m.mp4"), "--quiet"]) == 0
    cap = cv2.VideoCapture(str(tmp_path / "m.mp4"))
    ok, image = cap.read()
    assert ok and image.shape[1] == 2 * 640
    cap.release()
    # an existing per-stream video is never overwritten
    assert main(["--model", str(model), "--sources", str(listing), "--save", str(tmp_path / "videos"), "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err
    assert not _edgedet_threads()


def test_one_tracker_per_stream(tmp_path):
    from runtime.multistream import per_stream
    from runtime.track import ByteTracker

    det = Detector(make_blob_artifact(tmp_path, dynamic_batch=True))
    sources = {n: SequentialSource(n, _frames(i, 10)) for i, n in enumerate(("a", "b"))}
    step = per_stream(lambda: ByteTracker(high_thresh=0.5, new_track_thresh=0.5))
    got = []
    MultiStreamPipeline(sources, det, shared_sinks=[got.append], step=step).run()
    assert set(step.objects) == {"a", "b"} and step.objects["a"] is not step.objects["b"]
    for name in ("a", "b"):
        ids = {int(t) for r in got if r.stream == name for t in r.detections.track_ids if t >= 0}
        assert len(ids) == 1  # one moving box per stream: one track each, numbered by its own tracker
