"""runtime.Pipeline with a staged detector: preprocess / engine / postprocess overlap on their own threads,
results equal the frame-by-frame detector's and stay in frame order; async engines; live drops; clean stops."""
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from runtime import Detections, Detector, Pipeline, StopPipeline
from runtime.capture import LiveIteratorSource
from runtime.manifest import read_sidecar, write_sidecar
from runtime.testing import make_blob_artifact
from interruptible import popen_interruptible

REPO = Path(__file__).resolve().parents[1]


def _edgedet_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("edgedet-")]


def _scenes(n, h=120, w=160):
    """Frame i: a red box moving right and a green one moving down, so every frame's detections differ."""
    out = []
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[10:50, 5 + 3 * i:45 + 3 * i] = (0, 0, 255)
        f[60 + i:100 + i, 100:140] = (0, 255, 0)
        out.append(f)
    return out


def _assert_same(a: Detections, b: Detections):
    np.testing.assert_array_equal(a.boxes_xyxy, b.boxes_xyxy)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.image_size == b.image_size


def _run_and_compare(det, frames, **pipe_options):
    expected = [det(f) for f in frames]
    pipe = Pipeline(iter(frames), det, queue_size=2, **pipe_options)
    got = list(pipe)
    assert [r.frame.index for r in got] == list(range(len(frames)))
    for r, e in zip(got, expected):
        _assert_same(r.detections, e)
        assert set(r.detections.timings_ms) >= {"preprocess", "infer", "postprocess"}
    assert not _edgedet_threads()
    return pipe


def test_onnxruntime_detector_overlaps_and_equals_the_sync_path(tmp_path):
    det = Detector(make_blob_artifact(tmp_path, "sigmoid"))
    frames = _scenes(1)
    with Pipeline(LiveIteratorSource(iter(frames * 100_000)), det).start():
        seen = set(_edgedet_threads())
    assert seen >= {"edgedet-capture", "edgedet-preprocess", "edgedet-submit", "edgedet-postprocess", "edgedet-sinks"}
    assert "edgedet-detect" not in seen
    pipe = _run_and_compare(det, _scenes(20))
    assert pipe.overlap and set(pipe.stats()["latency_ms"]) >= {"preprocess", "infer", "postprocess", "detect", "end_to_end"}
    off = _run_and_compare(det, _scenes(5), overlap=False)
    assert not off.overlap

    class Shifted(Detector):  # changes what a call returns: must run whole, not as the base class's stages
        def __call__(self, frame):
            d = super().__call__(frame)
            return Detections(d.boxes_xyxy + 1, d.scores, d.labels, d.class_names, d.image_size)

    shifted = Shifted(make_blob_artifact(tmp_path / "sub", "sigmoid"))
    got = list(Pipeline(iter(_scenes(3)), shifted))
    assert not Pipeline(iter(()), shifted).overlap
    np.testing.assert_array_equal(got[0].detections.boxes_xyxy, det(_scenes(1)[0]).boxes_xyxy + 1)


def test_onnxruntime_run_async_matches_run(tmp_path):
    det = Detector(make_blob_artifact(tmp_path, "postprocessed"), async_run=True)
    assert det.backend.async_run
    frames = _scenes(12)
    feeds, _ = det.prepare(frames[:1])
    handle = det.submit(feeds)
    outputs = det.collect(handle)
    for name, value in det.backend.infer(feeds).items():
        np.testing.assert_array_equal(outputs[name], value)
    _run_and_compare(det, frames)
    with pytest.raises(ValueError, match="threads != 1"):
        Detector(make_blob_artifact(tmp_path / "one", "postprocessed"), async_run=True, threads=1)
    assert not Detector(make_blob_artifact(tmp_path / "cpu", "postprocessed")).backend.async_run  # CPU default: run()


def test_openvino_requests_in_flight_padded_static_batch(tmp_path):
    ov = pytest.importorskip("openvino")
    onnx_path = make_blob_artifact(tmp_path, "sigmoid", dynamic_batch=True)
    xml = tmp_path / "blob.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    write_sidecar(read_sidecar(onnx_path), xml)
    det = Detector(xml, num_requests=3, static_batch=2)  # each frame padded to the batch of 2
    assert det.max_in_flight == 3 and det.max_batch == 2
    _run_and_compare(det, _scenes(16))
    assert len(det.backend._free) == 3  # every request handed back


class FakeEngineDetector:
    """A staged detector whose engine finishes each call on a timer thread after `engine_s` (like a GPU):
    records how many calls were in flight and how many stages ran at once."""

    def __init__(self, prep_s=0.0, engine_s=0.0, post_s=0.0, max_in_flight=2, fail_at=-1):
        self.prep_s, self.engine_s, self.post_s, self.max_in_flight, self.fail_at = prep_s, engine_s, post_s, max_in_flight, fail_at
        self.lock = threading.Lock()
        self.in_flight = self.peak_in_flight = self.busy = self.peak_busy = self.submitted = self.collected = 0
        self.prepared = []

    def _enter(self):
        with self.lock:
            self.busy += 1
            self.peak_busy = max(self.peak_busy, self.busy)

    def _leave(self):
        with self.lock:
            self.busy -= 1

    def pad(self, frames):
        return list(frames)

    def prepare(self, frames):
        self._enter()
        time.sleep(self.prep_s)
        self._leave()
        values = [int(f[0, 0, 0]) for f in frames]
        self.prepared.extend(values)
        return {"x": np.array(values)}, [f.shape[:2] for f in frames]

    def submit(self, feeds):
        with self.lock:
            self.in_flight += 1
            self.submitted += 1
            assert self.in_flight <= self.max_in_flight, "more engine calls in flight than allowed"
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        done = threading.Event()
        box = {}

        def engine():
            self._enter()
            time.sleep(self.engine_s)
            self._leave()
            box["y"] = feeds["x"] * 2
            done.set()

        threading.Thread(target=engine, daemon=True).start()
        return done, box

    def collect(self, handle):
        done, box = handle
        done.wait()
        with self.lock:
            self.in_flight -= 1
            self.collected += 1
        if self.fail_at >= 0 and int(box["y"][0]) == 2 * self.fail_at:
            raise RuntimeError("engine lost")
        return box

    def finish(self, outputs, infos, count):
        self._enter()
        time.sleep(self.post_s)
        self._leave()
        return [Detections(np.array([[v // 2, 0, v // 2 + 1, 1]], np.float32), np.ones(1, np.float32), np.zeros(1, np.int64),
                           ("a",), info) for v, info in zip(outputs["y"][:count].tolist(), infos)]

    def __call__(self, frame):
        return self.finish(self.collect(self.submit(self.prepare([frame])[0])), [frame.shape[:2]], 1)[0]


def _valued(n):
    return [np.full((4, 4, 3), i % 256, np.uint8) for i in range(n)]


def test_stages_run_at_once_async_engine_keeps_order():
    fake = FakeEngineDetector(prep_s=0.01, engine_s=0.03, post_s=0.01, max_in_flight=2)
    got = list(Pipeline(iter(_valued(20)), fake, queue_size=3))
    assert [int(r.detections.boxes_xyxy[0, 0]) for r in got] == list(range(20)) == [r.frame.index for r in got]
    assert fake.peak_busy >= 2 and fake.peak_in_flight == 2  # overlap happened, the in-flight limit held
    assert fake.submitted == fake.collected == 20 and not _edgedet_threads()


def test_live_source_keeps_freshness_and_drop_accounting():
    def camera(n, period):
        for i in range(n):
            time.sleep(period)
            yield np.full((4, 4, 3), i, np.uint8)

    fake = FakeEngineDetector(prep_s=0.005, engine_s=0.05, max_in_flight=1)  # ~200 fps camera, 20 fps engine
    pipe = Pipeline(LiveIteratorSource(camera(100, 0.005)), fake)
    results = list(pipe)
    stats = pipe.stats()
    indices = [r.frame.index for r in results]
    assert indices == sorted(set(indices)) and len(indices) < 60
    assert [int(r.detections.boxes_xyxy[0, 0]) for r in results] == indices
    assert stats["dropped"] >= 30 and len(indices) + stats["dropped"] == 100
    assert indices[-1] >= 95
    assert stats["latency_ms"]["end_to_end"]["p50"] < 4 * 50  # as with one detect thread: about two engine calls


def test_close_mid_run_settles_engine_calls_in_flight():
    fake = FakeEngineDetector(engine_s=0.02, max_in_flight=2)
    pipe = Pipeline(LiveIteratorSource(iter(_valued(100_000))), fake)
    for i, _ in enumerate(pipe):
        if i == 5:
            break
    assert not _edgedet_threads() and fake.in_flight == 0 and fake.submitted == fake.collected
    pipe.close()


def test_engine_and_sink_errors_stop_everything():
    fake = FakeEngineDetector(engine_s=0.002, fail_at=7)
    with pytest.raises(RuntimeError, match="engine lost"):
        Pipeline(iter(_valued(50)), fake).run()
    assert not _edgedet_threads() and fake.in_flight == 0

    def sink(result):
        if result.frame.index == 3:
            raise StopPipeline

    stats = Pipeline(iter(_valued(50)), FakeEngineDetector(), sinks=[sink], queue_size=1).run()
    assert stats["frames"] == 3 and not _edgedet_threads()


def test_ctrl_c_stops_an_overlapped_pipeline_cleanly(tmp_path):
    model = make_blob_artifact(tmp_path)
    script = textwrap.dedent(f"""
        import threading, time
        import numpy as np
        from runtime import Detector, Pipeline
        from runtime.capture import LiveIteratorSource
        def camera():
            while True:
                time.sleep(0.005)
                yield np.zeros((48, 64, 3), np.uint8)
        pipe = Pipeline(LiveIteratorSource(camera()), Detector({str(model)!r}))
        print("ready", pipe.overlap, flush=True)
        try:
            pipe.run()
        except KeyboardInterrupt:
            left = [t.name for t in threading.enumerate() if t.name.startswith("edgedet-")]
            print("interrupted", pipe.stats()["frames"] > 0, left, flush=True)
    """)
    proc = popen_interruptible([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready True"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert out.strip() == "interrupted True []"


@pytest.mark.parametrize("dynamic_batch", [False, True])  # batch-1 artifact: one engine call per frame; dynamic: one per batch
def test_multistream_overlapped_equals_batch_in_stream_order(tmp_path, dynamic_batch):
    from runtime import MultiStreamPipeline
    from runtime.capture import SequentialSource

    det = Detector(make_blob_artifact(tmp_path, "sigmoid", dynamic_batch=dynamic_batch))
    streams = {f"s{k}": [np.roll(f, 7 * k, axis=0) for f in _scenes(10)] for k in range(3)}
    got = []
    pipe = MultiStreamPipeline({n: SequentialSource(n, iter(fs)) for n, fs in streams.items()}, det, shared_sinks=[got.append])
    assert pipe.overlap
    stats = pipe.run()
    assert stats["frames"] == 30 and not _edgedet_threads()
    for name, frames in streams.items():
        mine = [r for r in got if r.stream == name]
        assert [r.frame.index for r in mine] == list(range(10))
        for r, e in zip(mine, det.batch(frames)):
            _assert_same(r.detections, e)
    if not dynamic_batch:
        assert stats["engine_calls"] == 30 and stats["batch_mean"] == 1.0


def test_multistream_stages_overlap_with_an_async_engine():
    from runtime import MultiStreamPipeline
    from runtime.capture import SequentialSource

    fake = FakeEngineDetector(prep_s=0.01, engine_s=0.03, post_s=0.01, max_in_flight=2)
    fake.chunk = 0
    sources = {f"s{k}": SequentialSource(f"s{k}", iter(_valued(8))) for k in range(2)}
    got = []
    stats = MultiStreamPipeline(sources, fake, shared_sinks=[got.append]).run()
    assert stats["frames"] == 16 and fake.peak_busy >= 2 and fake.submitted == fake.collected
    for name in sources:
        assert [r.frame.index for r in got if r.stream == name] == list(range(8))


def test_tensorrt_backend_submitted_and_collected_on_different_threads(monkeypatch, tmp_path):
    """The TensorRT backend (on tests/trt_fakes.py stand-ins) as the pipeline drives it: enqueue on the submit
    thread, settle on the postprocess thread, the next enqueue only after that (max_in_flight 1)."""
    import trt_fakes

    _, _, backend_mod, _ = trt_fakes.install(monkeypatch)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"ENGINE fake")
    backend = backend_mod.TensorRTBackend().load(engine, device="cuda")

    class EngineDetector:  # the staged API over a bare engine: frame [4, 5, 3] -> its (sum, max) as a "detection"
        max_in_flight = backend.max_in_flight

        def pad(self, frames):  # the fake profile takes batches of 2..4: pad to 2 so the async enqueue path runs
            return list(frames) + list(frames)[-1:] * max(0, 2 - len(frames))

        def prepare(self, frames):
            return {"images": np.stack([f.transpose(2, 0, 1).astype(np.float32) for f in frames])}, [None] * len(frames)

        submit, collect = staticmethod(backend.infer_async), staticmethod(backend.wait)

        def finish(self, outputs, infos, count):
            return [Detections(np.zeros((1, 4), np.float32), s[:1].astype(np.float32), np.zeros(1, np.int64))
                    for s in outputs["scores"][:count]]

    frames = [np.random.default_rng(i).integers(0, 255, (4, 5, 3), dtype=np.uint8) for i in range(12)]
    got = list(Pipeline(iter(frames), EngineDetector(), queue_size=3))
    assert backend.max_in_flight == 1 and [r.frame.index for r in got] == list(range(12))
    for r, f in zip(got, frames):
        assert r.detections.scores[0] == pytest.approx(float(f.astype(np.float32).sum()), rel=1e-6)
    backend.close()


def test_opencv_threads_held_while_pipelines_run_and_restored_after_the_last():
    import cv2

    def detect(image):
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(3)
        frames = [np.zeros((32, 48, 3), np.uint8)] * 3
        first = Pipeline(frames, detect, opencv_threads=1).start()
        assert cv2.getNumThreads() == 1
        second = Pipeline(frames, detect, opencv_threads=1).start()
        first.close()
        assert cv2.getNumThreads() == 1  # the second pipeline still runs
        second.close()
        assert cv2.getNumThreads() == 3
        Pipeline(frames, detect, opencv_threads=None).start().close()
        assert cv2.getNumThreads() == 3  # None leaves OpenCV alone
    finally:
        cv2.setNumThreads(before)
