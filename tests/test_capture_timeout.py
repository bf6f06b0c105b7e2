"""A camera that stops answering: its read is timed out and the source reopened (issue #31).

cv2.VideoCapture is replaced by a fake whose read() blocks forever on its first connection, as a
CSI camera or RTSP feed can hang inside the driver. Nothing real is opened.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import runtime.capture as capture


class FakeCapture:
    """Connection k gives frames filled with value k; on connection 0 the 4th read never returns (until `unblock`)."""

    opened: list = []
    unblock = threading.Event()

    def __init__(self, target, api=None):
        self.k = len(FakeCapture.opened)
        FakeCapture.opened.append(self)
        self.reads, self.released, self.reading = 0, False, False
        self.released_while_reading = False

    def isOpened(self):
        return True

    def set(self, *args):
        return True

    def get(self, prop):
        return 30.0

    def read(self):
        self.reading = True
        try:
            self.reads += 1
            if self.k == 0 and self.reads == 4:
                FakeCapture.unblock.wait()  # the driver hangs here
                return False, None
            return True, np.full((8, 8, 3), self.k, np.uint8)
        finally:
            self.reading = False

    def release(self):
        self.released_while_reading |= self.reading
        self.released = True


@pytest.fixture
def fake_camera(monkeypatch):
    FakeCapture.opened, FakeCapture.unblock = [], threading.Event()
    monkeypatch.setattr(capture.cv2, "VideoCapture", FakeCapture)
    yield FakeCapture
    FakeCapture.unblock.set()


def test_a_hung_read_is_timed_out_and_the_camera_reopened(fake_camera, caplog):
    src = capture.CaptureSource(0, read_timeout=0.3, reconnects=2, retry_delay=0.01)
    values = []
    try:
        while not values or values[-1] == 0:  # frames of the first connection, then of the reopened one
            values.append(int(src.read(timeout=5).image[0, 0, 0]))
    finally:
        src.close()
    assert values[-1] == 1 and set(values) == {0, 1}
    assert len(fake_camera.opened) == 2
    assert "no frame within 0.3 s" in caplog.text and "reopening" in caplog.text
    hung = fake_camera.opened[0]
    assert not hung.released  # never released under a read that is still inside the driver
    fake_camera.unblock.set()  # the driver returns at last: the abandoned capture is released then
    for _ in range(100):
        if hung.released:
            break
        threading.Event().wait(0.02)
    assert hung.released and not hung.released_while_reading
    assert fake_camera.opened[1].released and not fake_camera.opened[1].released_while_reading


def test_a_camera_that_keeps_hanging_ends_with_a_clear_error(fake_camera, monkeypatch):
    monkeypatch.setattr(FakeCapture, "read", lambda self: (FakeCapture.unblock.wait(), (False, None))[1])
    src = capture.CaptureSource(0, read_timeout=0.1, reconnects=2, retry_delay=0.01)
    try:
        with pytest.raises(RuntimeError, match="lost source 0: no frames after 2 reconnect attempts"):
            src.read(timeout=10)
    finally:
        src.close()
    assert len(fake_camera.opened) == 3  # the first connection and two reopenings, each timed out


def test_read_timeout_must_be_positive(fake_camera):
    with pytest.raises(ValueError, match="read_timeout must be > 0"):
        capture.CaptureSource(0, read_timeout=0)


@pytest.mark.parametrize("pipeline, finite", [
    ("filesrc location=a.mp4 ! decodebin ! videoconvert ! appsink", True),
    ("videotestsrc num-buffers=30 ! videoconvert ! appsink", True),
    ("multifilesrc location=img%03d.png ! pngdec ! videoconvert ! appsink", True),
    (capture.jetson_csi_pipeline(), False),
    ("rtspsrc location=rtsp://cam/live ! decodebin ! videoconvert ! appsink", False),
])
def test_which_pipelines_end_by_themselves(pipeline, finite):
    assert capture.is_finite_pipeline(pipeline) is finite
