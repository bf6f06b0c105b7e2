"""Engine-building helpers that run without TensorRT: atomic writes of engines and caches, the
INT8 calibrator over several inputs (with stand-ins for TensorRT and cuda-python), the INT8 mode."""
from __future__ import annotations

import os

import numpy as np
import pytest

import trt_fakes
from converters.tensorrt.builder import resolve_int8_mode
from converters.tensorrt.calibrator import CalibrationFeeder
from converters.tensorrt.files import atomic_write, atomic_write_bytes


def test_atomic_write_replaces_the_file(tmp_path):
    path = tmp_path / "model.engine"
    path.write_bytes(b"old engine")
    atomic_write_bytes(path, b"new engine")
    assert path.read_bytes() == b"new engine" and os.listdir(tmp_path) == ["model.engine"]


def test_a_write_failing_midway_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "model.timing.cache"
    path.write_bytes(b"old cache")

    def write_half_then_fail(f):
        f.write(b"half of the new ")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, write_half_then_fail)
    assert path.read_bytes() == b"old cache" and os.listdir(tmp_path) == ["model.timing.cache"]
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C mid-write too
        atomic_write(tmp_path / "fresh.engine", lambda f: (f.write(b"x"), (_ for _ in ()).throw(KeyboardInterrupt)))
    assert os.listdir(tmp_path) == ["model.timing.cache"]


class FakeBuffer:
    live = 0

    def __init__(self, nbytes):
        self.nbytes, self.data, self.ptr = nbytes, None, id(self)
        FakeBuffer.live += 1

    def copy_from_host(self, arr):
        self.data = arr.copy()

    def free(self):
        if self.ptr:
            FakeBuffer.live -= 1
            self.ptr = 0


def test_calibration_feeds_every_input_and_frees_its_buffers():
    FakeBuffer.live = 0
    rng = np.random.default_rng(0)
    batches = [{"image": rng.random((2, 3, 8, 8)), "prompt": rng.random((2, 5, 16))} for _ in range(3)]
    feeder = CalibrationFeeder(iter(batches), ["image", "prompt"], FakeBuffer)
    assert feeder.batch_size == 2
    for batch in batches:
        ptrs = feeder.next_pointers(["prompt", "image"])  # TensorRT's order, not ours
        assert ptrs == [feeder.buffers["prompt"].ptr, feeder.buffers["image"].ptr]
        np.testing.assert_array_equal(feeder.buffers["prompt"].data, batch["prompt"].astype(np.float32))
        assert feeder.buffers["image"].data.dtype == np.float32
    assert feeder.next_pointers(["image", "prompt"]) is None and feeder.batches_fed == 3
    assert FakeBuffer.live == 2
    feeder.close()
    assert FakeBuffer.live == 0


def test_calibration_batches_are_checked():
    arr = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="as a dict"):
        CalibrationFeeder([arr], ["image", "prompt"], FakeBuffer)
    with pytest.raises(ValueError, match="disagree on the batch size"):
        CalibrationFeeder([{"a": arr, "b": arr[:1]}], ["a", "b"], FakeBuffer)
    with pytest.raises(ValueError, match="at least one"):
        CalibrationFeeder([], ["a"], FakeBuffer)
    feeder = CalibrationFeeder([arr, arr[:1]], ["images"], FakeBuffer)
    feeder.next_pointers(["images"])
    with pytest.raises(ValueError, match="every batch must hold 2"):
        feeder.next_pointers(["images"])
    feeder.close()


def test_tensorrt_calibrator_with_stand_ins(monkeypatch, tmp_path):
    trt, cudart, _, _ = trt_fakes.install(monkeypatch)
    from converters.tensorrt.calibrator import make_entropy_calibrator

    cache = tmp_path / "model.calib.cache"
    cache.write_bytes(b"old")
    batches = [np.full((1, 3, 2, 2), i, np.float32) for i in range(2)]
    calib = make_entropy_calibrator(batches, ["images"], cache)
    assert calib.get_batch_size() == 1 and calib.read_calibration_cache() == b"old"
    (ptr,) = calib.get_batch(["images"])
    assert np.frombuffer(cudart.device_mem[ptr], np.float32).tolist() == [0.0] * 12
    calib.get_batch(["images"])
    assert calib.get_batch(["images"]) is None
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        calib.write_calibration_cache(b"new table")
    assert cache.read_bytes() == b"old"
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    calib.write_calibration_cache(b"new table")
    assert cache.read_bytes() == b"new table"
    calib.close()
    assert cudart.live()["device"] == 0


@pytest.mark.parametrize("requested,major,mode", [
    ("auto", 10, "qdq"), ("auto", 8, "calibrator"), ("auto", None, "qdq"), ("calibrator", 10, "calibrator"),
    ("qdq", 8, "qdq"),
])
def test_int8_mode(requested, major, mode):
    assert resolve_int8_mode(requested, major) == mode


def test_int8_mode_rejects_unknown():
    with pytest.raises(ValueError, match="auto, qdq, calibrator"):
        resolve_int8_mode("implicit", 10)
