"""Dynamic batch in every CPU export form: one batch-N call equals N batch-1 calls (<= 1e-4), postprocess in graph.

Run through `runtime.Detector.infer`, so the runtime's backends (and the fused-op library
lookup) are what is tested, plus OpenVINO's reshape-to-static option.
"""
from __future__ import annotations

import numpy as np
import pytest

from converters import export
from converters.openvino.convert import fused_extension_available
from export_helpers import build_tiny, feeds, graph_inputs, random_images, registered_models, write_images
from runtime import Detector
from runtime.manifest import read_sidecar

HW = (64, 96)
MODEL = "dino" if "dino" in registered_models() else "tiny_msda"
N = 3

FORMS = [
    ("onnx", "grid_sample", "fp32"),
    ("onnx", "gather", "fp32"),
    ("openvino", "grid_sample", "fp32"),
    ("openvino", "gather", "fp32"),
    pytest.param("openvino", "fused", "fp32", marks=pytest.mark.skipif(not fused_extension_available(), reason="OpenVINO MSDA extension not built")),
    # INT8 exports calibrate first (a minute each on a busy 2-core machine): slow set
    pytest.param("onnx", "grid_sample", "int8", marks=pytest.mark.slow),
    pytest.param("openvino", "fused", "int8", marks=[pytest.mark.slow, pytest.mark.skipif(
        not fused_extension_available(), reason="OpenVINO MSDA extension not built")]),
]


@pytest.fixture(scope="module")
def model():
    return build_tiny(MODEL)


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("calib"), n=4)


def _assert_batch_equals_singles(det: Detector, x: np.ndarray) -> None:
    batched = det.infer(feeds(graph_inputs(det), x))
    for i in range(len(x)):
        single = det.infer(feeds(graph_inputs(det), x[i:i + 1]))
        for name, value in single.items():
            got = batched[name][i:i + 1]
            if value.dtype.kind in "iu":
                assert np.array_equal(got, value), f"{name} of image {i} differs between batch {len(x)} and batch 1"
            else:
                assert np.abs(got - value).max() <= 1e-4, f"{name} of image {i}: {np.abs(got - value).max():.2e}"


@pytest.mark.parametrize("fmt,form,precision", FORMS)
def test_batch_n_equals_n_single_calls(tmp_path, model, calib, fmt, form, precision):
    suffix = ".xml" if fmt == "openvino" else ".onnx"
    path = export(model, fmt, tmp_path / f"m{suffix}", imgsz=HW, msda=form, precision=precision, dynamic_batch=True,
                  calib=calib if precision == "int8" else None, simplify=False)
    assert read_sidecar(path).batch == 0  # 0 = dynamic, as the runtime reads it
    with Detector(path) as det:
        assert det.max_batch == 0
        x = random_images(N, HW, seed=11)
        _assert_batch_equals_singles(det, x)
        frames = [np.random.default_rng(i).integers(0, 255, (80 + 10 * i, 120, 3), dtype=np.uint8) for i in range(N)]
        one_by_one = [det(f) for f in frames]
        together = det.batch(frames)
        for a, b in zip(one_by_one, together):
            np.testing.assert_allclose(a.boxes_xyxy, b.boxes_xyxy, atol=1e-3)
            assert np.array_equal(a.labels, b.labels)


def test_openvino_reshape_to_static_batch(tmp_path, model):
    path = export(model, "openvino", tmp_path / "d.xml", imgsz=HW, msda="gather", dynamic_batch=True, simplify=False)
    x = random_images(N, HW, seed=5)
    with Detector(path) as dynamic, Detector(path, static_batch=N) as static:
        assert static.max_batch == N and dynamic.max_batch == 0
        want = dynamic.infer(feeds(graph_inputs(dynamic), x))
        got = static.infer(feeds(graph_inputs(static), x))
        for name in want:
            assert np.abs(got[name].astype(np.float64) - want[name]).max() <= 1e-4
        frames = [np.full((70, 90, 3), 40 * i, np.uint8) for i in range(N + 1)]  # N + 1: one full batch, one padded
        assert len(static.batch(frames)) == N + 1
    fixed = export(model, "openvino", tmp_path / "f.xml", imgsz=HW, msda="gather", simplify=False)
    with pytest.raises(RuntimeError, match="fixed batch of 1.*dynamic batch"):
        Detector(fixed, static_batch=N)


def test_tensorrt_batch_profile_defaults_and_checks(model):
    from converters.formats import ExportError
    from converters.tensorrt.builder import EngineOptions, profile_batches

    assert profile_batches(EngineOptions(dynamic_batch=True, max_batch=4)) == (1, 4, 4)  # default 1/N/N
    assert profile_batches(EngineOptions(dynamic_batch=True, min_batch=2, opt_batch=3, max_batch=8)) == (2, 3, 8)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        profile_batches(EngineOptions(min_batch=4, opt_batch=2, max_batch=8))
    with pytest.raises(ExportError, match="batch_profile"):  # refused before any export work
        export(model, "tensorrt", "/nonexistent/m.engine", imgsz=HW, dynamic_batch=True, batch_profile=(4, 2, 8), dry_run=True)
