"""The TensorRT backend's bookkeeping on a CPU, with stand-ins for TensorRT and cuda-python
(tests/trt_fakes.py): batch chunking to the profile, pinned staging, device selection, freeing
everything on close() and on garbage collection, CUDA graph replay, the plugin library loaded
once."""
from __future__ import annotations

import gc
import shutil

import numpy as np
import pytest

from runtime.backends.base import ArtifactError
import trt_fakes


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    trt, cudart, backend, cuda_memory = trt_fakes.install(monkeypatch)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"ENGINE fake")
    return trt, cudart, backend, engine


def expected(x):
    flat = x.reshape(x.shape[0], -1)
    return np.stack([flat.sum(1), flat.max(1)], 1)


def images(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 4, 5)).astype(np.float32)


@pytest.mark.parametrize("n,runs", [(1, 1), (2, 1), (4, 1), (7, 2), (9, 3)])
def test_batches_are_chunked_and_padded_to_the_profile(fakes, n, runs):
    trt, cudart, backend_mod, path = fakes
    be = backend_mod.TensorRTBackend().load(path, device="cuda")
    assert be.batch_limits == (2, 4) and be.input_specs[0].shape == (None, 3, 4, 5)
    x = images(n)
    out = be.infer({"images": x})["scores"]
    assert out.shape == (n, 2)
    np.testing.assert_allclose(out, expected(x), rtol=1e-6)
    assert be._engine.executions == runs
    be.close()


def test_copies_are_staged_in_pinned_memory_and_everything_is_freed(fakes):
    trt, cudart, backend_mod, path = fakes
    be = backend_mod.TensorRTBackend().load(path, device="cuda")
    for n in (2, 4, 3):
        be.infer({"images": images(n, seed=n)})
    assert cudart.log and set(cudart.log) == {"pinned"}
    live = cudart.live()
    assert live["device"] == 2 and live["pinned"] == 2 and live["streams"] == 1  # grown once, reused
    be.close()
    assert cudart.live() == {"device": 0, "pinned": 0, "streams": 0, "graphs": 0}
    be.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        be.infer({"images": images(2)})


def test_an_unclosed_backend_is_freed_when_collected(fakes):
    trt, cudart, backend_mod, path = fakes
    be = backend_mod.TensorRTBackend().load(path, device="cuda", cuda_graph=True)
    be.infer({"images": images(2)})
    be.infer({"images": images(2)})
    assert cudart.live()["graphs"] == 2
    del be
    gc.collect()
    assert cudart.live() == {"device": 0, "pinned": 0, "streams": 0, "graphs": 0}


def test_device_index_is_honoured_and_checked(fakes):
    trt, cudart, backend_mod, path = fakes
    be = backend_mod.TensorRTBackend().load(path, device="cuda:1")
    assert cudart.device == 1 and be.device == "cuda:1"
    cudart.device = 0  # another thread's current device: the next request sets its own again
    be.infer({"images": images(2)})
    assert cudart.device == 1
    be.close()
    with pytest.raises(ValueError, match="GPU 5.*2 CUDA device"):
        backend_mod.TensorRTBackend().load(path, device="cuda:5")
    with pytest.raises(ValueError, match="not a CUDA device"):
        backend_mod.TensorRTBackend().load(path, device="NPU")
    assert backend_mod.TensorRTBackend().load(path, device="CPU").device == "cuda:0"


def test_cuda_graph_replays_the_enqueue(fakes):
    trt, cudart, backend_mod, path = fakes
    be = backend_mod.TensorRTBackend().load(path, device="cuda", cuda_graph=True)
    a, b = images(3, seed=1), images(3, seed=2)
    np.testing.assert_allclose(be.infer({"images": a})["scores"], expected(a), rtol=1e-6)
    assert "graph" not in cudart.log  # first run of a shape: plain enqueue, then captured
    np.testing.assert_allclose(be.infer({"images": b})["scores"], expected(b), rtol=1e-6)
    assert cudart.log.count("graph") == 1 and be._engine.executions == 2
    c = images(4, seed=3)  # a new shape: bigger buffers, so the old graph is dropped
    np.testing.assert_allclose(be.infer({"images": c})["scores"], expected(c), rtol=1e-6)
    assert cudart.live()["graphs"] == 2  # only the batch-4 graph (graph + instance)
    be.close()


def test_async_requests_keep_their_outputs(fakes):
    trt, cudart, backend_mod, path = fakes
    be = backend_mod.TensorRTBackend().load(path, device="cuda")
    a, b = images(2, seed=4), images(2, seed=5)
    first = be.infer_async({"images": a})
    second = be.infer_async({"images": b})  # reuses the pinned outputs: the first is settled first
    np.testing.assert_allclose(be.wait(second)["scores"], expected(b), rtol=1e-6)
    np.testing.assert_allclose(be.wait(first)["scores"], expected(a), rtol=1e-6)
    be.close()


def test_static_batch_engine_is_not_chunked(monkeypatch, tmp_path):
    trt, cudart, backend_mod, _ = trt_fakes.install(monkeypatch, engine_kwargs={"static_batch": 2})
    path = tmp_path / "static.engine"
    path.write_bytes(b"ENGINE")
    be = backend_mod.TensorRTBackend().load(path, device="cuda")
    assert be.batch_limits == (2, 2) and be.input_specs[0].shape == (2, 3, 4, 5)
    with pytest.raises(Exception, match=r"expects \[2x3x4x5\]"):
        be.infer({"images": images(3)})
    be.close()


def test_corrupt_engine_and_unknown_option(fakes, tmp_path):
    trt, cudart, backend_mod, path = fakes
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="rebuild it on this device"):
        backend_mod.TensorRTBackend().load(bad, device="cuda")
    gc.collect()  # the half-loaded backend is garbage: its finaliser frees what it had allocated
    assert cudart.live() == {"device": 0, "pinned": 0, "streams": 0, "graphs": 0}
    with pytest.raises(TypeError, match="cuda_graph"):
        backend_mod.TensorRTBackend().load(path, device="cuda", cuda_grpah=True)


def test_plugin_library_is_loaded_once_and_its_creator_registered_once(fakes, tmp_path):
    trt, cudart, backend_mod, path = fakes
    from runtime.backends import trt_plugins

    lib = tmp_path / "build" / "libedgedet_trt_msda.so"
    lib.parent.mkdir()
    lib.write_bytes(b"\x7fELF")
    copy = tmp_path / "libedgedet_trt_msda.so"  # the exporter's copy beside the engine
    shutil.copy(lib, copy)
    assert trt_plugins.load_plugin_library(trt, lib) is True
    assert trt_plugins.load_plugin_library(trt, lib) is False
    assert trt_plugins.load_plugin_library(trt, copy) is False
    assert len(trt.registry.creators) == 1 and trt.registry.loaded == [str(lib.resolve())]
    trt_plugins.init_builtin_plugins(trt, None)
    trt_plugins.init_builtin_plugins(trt, None)
    assert trt.init_calls == 1


def test_close_frees_everything_even_after_a_cuda_error(fakes, monkeypatch):
    trt, cudart, backend_mod, path = fakes
    be = backend_mod.TensorRTBackend().load(path, device="cuda")
    be.infer({"images": images(2)})
    monkeypatch.setattr(cudart, "cudaStreamSynchronize", lambda s: (700,))  # a sticky error (illegal address)
    with pytest.raises(RuntimeError, match="CUDA error"):
        be.close()
    assert cudart.live() == {"device": 0, "pinned": 0, "streams": 0, "graphs": 0}


def test_cuda_graph_bench_runs_against_the_stand_ins(fakes, capsys):
    """benches/tensorrt_graph.py end to end on the stand-ins: same outputs, a table and a JSON line."""
    import json
    from pathlib import Path

    from script_loader import load_script

    trt, cudart, backend_mod, path = fakes
    bench = load_script(Path(__file__).resolve().parents[1] / "benches" / "tensorrt_graph.py", "bench_trt_graph")
    assert bench.main(["--engine", str(path), "--batch", "2", "--repeats", "3", "--warmup", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["rows"]) == {"enqueue", "cuda_graph"} and result["max_abs_diff"] == 0.0
    assert "graph" in cudart.log and cudart.live() == {"device": 0, "pinned": 0, "streams": 0, "graphs": 0}


def test_detector_batches_no_more_frames_than_the_profile_allows(fakes):
    """Detector.batch preprocesses and runs at most the engine profile's max batch at a time."""
    from runtime.detector import Detector
    from runtime.manifest import Manifest, PreprocessSpec

    trt, cudart, backend_mod, path = fakes
    manifest = Manifest(batch=0, class_names=["a"], backend="tensorrt", preprocess=PreprocessSpec(size=(4, 5)))
    det = Detector(path, backend="tensorrt", device="cuda", manifest=manifest)
    assert det.max_batch == 0 and det.chunk == 4  # dynamic batch, bounded by the profile
    seen = []
    det._run = lambda frames: seen.append(len(frames)) or list(frames)
    assert det.batch(list(range(9))) == list(range(9)) and seen == [4, 4, 1]
    det.close()
