"""runtime.capture: files in order, live sources keep only the newest frame, clear errors."""
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.capture import LiveIteratorSource, LiveSource, jetson_csi_pipeline, open_source

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"


def _coded(i, h=48, w=64):
    """A flat frame whose grey level encodes i (survives video compression)."""
    return np.full((h, w, 3), (i * 8) % 256, np.uint8)


def _decode(frame):
    return int(round(float(frame.mean()) / 8))


def _write_video(path, n=20, fps=25.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened()
    for i in range(n):
        writer.write(_coded(i))
    writer.release()
    return path


def test_video_file_read_in_order_without_drops(tmp_path):
    src = open_source(_write_video(tmp_path / "v.avi"))
    assert not src.is_live and src.fps == pytest.approx(25.0)
    frames = list(src)
    assert [_decode(f.image) for f in frames] == list(range(20))
    assert [f.index for f in frames] == list(range(20)) and src.dropped == 0
    src.close()
    assert src.read() is None


def test_shared_video_all_frames():
    path = VIDEOS / "car-detection.mp4"
    if not path.is_file():
        pytest.skip("shared videos absent")
    with open_source(str(path)) as src:
        n = sum(1 for f in src if f.image.shape == (432, 768, 3))
    assert n == 377


def test_folder_sorted_and_single_image(tmp_path):
    for i in (2, 0, 1):
        cv2.imwrite(str(tmp_path / f"img_{i}.png"), _coded(i + 1))
    (tmp_path / "notes.txt").write_text("not an image")
    assert [_decode(f.image) for f in open_source(tmp_path)] == [1, 2, 3]
    assert [_decode(f.image) for f in open_source(str(tmp_path / "img_2.png"))] == [3]
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(RuntimeError, match="could not read image .*bad.jpg"):  # a single image: nothing to skip to
        list(open_source(str(tmp_path / "bad.jpg")))


def test_iterators_and_arrays():
    assert [_decode(f.image) for f in open_source(_coded(i) for i in range(5))] == list(range(5))
    assert len(list(open_source(_coded(3)))) == 1


def test_live_iterator_keeps_only_the_newest_frame():
    produced = []

    def camera():
        for i in range(30):
            produced.append(i)
            time.sleep(0.01)
            yield _coded(i)

    src = LiveIteratorSource(camera())
    first = src.read(timeout=2)
    time.sleep(0.15)  # a slow consumer: ~15 frames arrive meanwhile
    second = src.read(timeout=2)
    assert second.index - first.index >= 5 and src.dropped >= 4
    assert _decode(second.image) >= produced[-1] - 1  # the newest one, not a queued old one
    rest = list(src)
    assert rest[-1].index == 29 and src.read() is None
    src.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("edgedet-capture")]


def test_live_video_plays_at_its_fps(tmp_path):
    src = open_source(_write_video(tmp_path / "v.avi", n=10, fps=50.0), live=True)
    t0 = time.perf_counter()
    frames = list(src)
    assert src.is_live and time.perf_counter() - t0 >= 9 / 50 * 0.8
    assert [f.index for f in frames] == sorted(f.index for f in frames)
    src.close()


def test_missing_camera_and_path_errors():
    with pytest.raises(RuntimeError, match=r"could not open camera 57 .*ls /dev/video"):
        open_source(57)
    with pytest.raises(RuntimeError, match="could not open camera 58"):
        open_source("58")
    with pytest.raises(FileNotFoundError, match="camera index, a video/image file"):
        open_source("no/such/clip.mp4")
    with pytest.raises(TypeError, match="cannot open a source"):
        open_source(3.5)


def test_gstreamer_pipeline_string():
    s = jetson_csi_pipeline(sensor_id=1, width=1920, height=1080, fps=30, flip=2, output_width=960, output_height=540)
    assert s.startswith("nvarguscamerasrc sensor-id=1 ! ") and s.endswith("appsink drop=true max-buffers=1 sync=false")
    assert "width=(int)1920, height=(int)1080, framerate=(fraction)30/1" in s and "flip-method=2" in s
    assert "width=(int)960, height=(int)540, format=(string)BGRx" in s


def test_gstreamer_without_support_is_explained():
    from runtime.capture import _has_gstreamer

    if _has_gstreamer():
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(RuntimeError, match=r"cannot open a GStreamer pipeline with this OpenCV: OpenCV \S+ from .*GStreamer: no") as e:
        open_source(jetson_csi_pipeline())
    assert "\n" not in str(e.value)


def test_lost_stream_is_reopened(tmp_path):
    from runtime.capture import CaptureSource

    # A file opened as a "stream": at its end the read fails like a dropped RTSP feed and the
    # source reopens it, so frames keep coming (the 20 frames replay).
    src = CaptureSource(str(_write_video(tmp_path / "v.avi")), reconnects=2, retry_delay=0.01)
    last = None
    while last is None or last.index < 30:
        last = src.read(timeout=5)
    src.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("edgedet-capture")]


class FlakyCamera(LiveSource):
    """Gives `good` frames per connection; the first `bad_opens` reopen attempts fail."""

    def __init__(self, good, bad_opens, reconnects):
        self.good, self.bad_opens, self.opens, self.left = good, bad_opens, 0, 0
        super().__init__("flaky", reconnects=reconnects, retry_delay=0.001)
        self.start()

    def _open(self):
        self.opens += 1
        if 1 < self.opens <= 1 + self.bad_opens:
            raise RuntimeError("camera busy")
        self.left = self.good

    def _grab(self):
        if self.left == 0:
            return None
        self.left -= 1
        time.sleep(0.002)
        return _coded(self.left)


def test_reconnects_are_bounded():
    src = FlakyCamera(good=3, bad_opens=10, reconnects=3)
    with pytest.raises(RuntimeError, match="no frames after 3 reconnect attempts"):
        while src.read(timeout=5) is not None:
            pass
    assert src.opens == 4  # the first open and 3 failed retries
    src.close()
    src = FlakyCamera(good=3, bad_opens=2, reconnects=3)  # recovers on the third try
    seen = 0
    while seen < 5:  # more than one connection's worth: frames came after two failed reopens
        seen += src.read(timeout=5) is not None
    assert src.opens >= 4
    src.close()


def test_video_files_decode_on_one_thread_unless_told(tmp_path, monkeypatch):
    """One FFmpeg thread by default (less CPU a frame beside an engine that fills the cores); 0 = FFmpeg's own."""
    from runtime.capture import DECODE_THREADS_ENV, _open_video

    if not hasattr(cv2, "CAP_PROP_N_THREADS"):
        pytest.skip("this OpenCV has no CAP_PROP_N_THREADS (< 4.7)")
    video = tmp_path / "v.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (64, 48))  # a codec FFmpeg threads
    for i in range(5):
        writer.write(_coded(i))
    writer.release()
    cap = _open_video(video)
    assert cap.get(cv2.CAP_PROP_N_THREADS) == 1
    cap.release()
    monkeypatch.setenv(DECODE_THREADS_ENV, "0")
    cap = _open_video(video)
    if cv2.getNumberOfCPUs() > 1:  # FFmpeg's default: a thread per core
        assert cap.get(cv2.CAP_PROP_N_THREADS) > 1
    cap.release()
    assert len(list(open_source(str(video)))) == 5
    monkeypatch.setenv(DECODE_THREADS_ENV, "two")
    with pytest.raises(ValueError, match="EDGEDET_DECODE_THREADS='two'"):
        _open_video(video)


def test_a_backend_that_refuses_the_thread_count_still_opens_the_video(tmp_path, monkeypatch):
    """OpenCV's GStreamer backend (a Jetson's OpenCV may have no FFmpeg) bails out on parameters it does not
    take: the file is then opened without them rather than refused."""
    import runtime.capture as capture

    real = cv2.VideoCapture
    calls = []

    def no_params_backend(*args):
        calls.append(len(args))
        return real("/nonexistent/refused.mp4") if len(args) == 3 else real(*args)

    monkeypatch.setattr(capture.cv2, "VideoCapture", no_params_backend)
    video = _write_video(tmp_path / "v.avi", n=4)
    assert [_decode(f.image) for f in open_source(str(video))] == list(range(4))
    assert calls[:2] == [3, 1] or not hasattr(cv2, "CAP_PROP_N_THREADS")
