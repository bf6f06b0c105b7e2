"""TensorRT export of the prompted detector's two artifacts, and `.engine` artifacts in the runtime.

What runs here (no TensorRT, no GPU): the dry run writes both ONNX graphs with the MSDA plugin node
(our plugin or TensorRT's built-in one) and they pass onnx.checker; the export without TensorRT
fails early with an error saying what to do; `PromptedDetector` loads `.engine` artifacts through
the `tensorrt` backend entry (played here by ONNX Runtime on the same graphs). Building and running
real engines is tested where TensorRT is installed (skipped otherwise).
"""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from converters.formats import ExportError
from converters.prompted import export_prompted
from converters.tensorrt.onnx_plugins import FUSED_OP, TRT_BUILTIN_OP
from runtime.backends.base import BACKENDS, BackendEntry
from runtime.backends.onnxruntime import OnnxRuntimeBackend
from runtime.manifest import read_sidecar, write_sidecar
from runtime.prompted import PromptedDetector
from test_tensorrt import _input_types
from test_trex import SIZE, tiny_model
from test_trex_deploy import frame

try:
    import tensorrt  # noqa: F401

    HAVE_TENSORRT = True
except ImportError:
    HAVE_TENSORRT = False


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory, model):
    """Plain ONNX artifacts (gather form: no plugin, ONNX Runtime runs them) -> their folder."""
    folder = tmp_path_factory.mktemp("prompted-onnx")
    export_prompted(model, folder, format="onnx", imgsz=(SIZE, SIZE), msda="gather", text_prompts=["circle"], simplify=False)
    return folder


@pytest.mark.parametrize("msda,op", [("fused", FUSED_OP), ("trt_builtin", TRT_BUILTIN_OP)])
def test_dry_run_writes_both_plugin_graphs(tmp_path, model, msda, op):
    enc, det = export_prompted(model, tmp_path, format="tensorrt", imgsz=(SIZE, SIZE), msda=msda, dry_run=True,
                               simplify=False)
    assert (enc.name, det.name) == ("trex-prompt-encoder.onnx", "trex-detector.onnx")
    assert not list(tmp_path.glob("*.engine"))
    for path, layers in ((enc, model.config.prompt_enc_layers),
                         (det, model.config.enc_layers + model.config.dec_layers)):
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph, full_check=False)
        nodes = [n for n in graph.graph.node if n.op_type == op]
        # the encoder graph runs the image encoder too; the detector adds the decoder
        assert len(nodes) >= layers, f"{path.name}: {len(nodes)} {op} nodes"
        assert not any(n.op_type == "GridSample" for n in graph.graph.node)
        for node in nodes:
            assert [t[0] for t in _input_types(graph, node)] == [
                TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT32, TensorProto.FLOAT, TensorProto.FLOAT]
    manifest = read_sidecar(det)
    assert manifest.extra["prompted"]["role"] == "detector" and manifest.msda == msda
    assert [i.name for i in onnx.load(str(det)).graph.input] == ["images", "prompt_embeddings", "prompt_mask", "valid_hw"]


def test_dry_run_is_tensorrt_only(tmp_path, model):
    with pytest.raises(ExportError, match="dry_run applies to format='tensorrt'"):
        export_prompted(model, tmp_path, format="onnx", imgsz=(SIZE, SIZE), dry_run=True)


def test_int8_is_refused_with_the_reason(tmp_path, model):
    with pytest.raises(ExportError, match="precision fp32, fp16"):
        export_prompted(model, tmp_path, format="tensorrt", imgsz=(SIZE, SIZE), precision="int8", dry_run=True)


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed: the engine test below runs instead")
def test_export_without_tensorrt_fails_early_and_says_what_to_do(tmp_path, model):
    from converters.tensorrt.builder import TensorRTUnavailableError

    with pytest.raises(TensorRTUnavailableError, match="dry_run=True"):
        export_prompted(model, tmp_path, format="tensorrt", imgsz=(SIZE, SIZE))
    assert not list(tmp_path.glob("*.onnx"))  # failed before the exports


class _OnnxRuntimeAsTensorRT(OnnxRuntimeBackend):
    """Stands in for TensorRT: runs an `.engine` file that holds a plain ONNX graph."""

    name = "tensorrt"


def _as_engines(src, dst, suffix=".engine"):
    """Copy an ONNX export to `.engine` names with TensorRT sidecar manifests, as a real engine build writes them."""
    dst.mkdir()
    shutil.copy2(src / "text_prompts.npz", dst / "text_prompts.npz")
    paths = []
    for stem in ("trex-prompt-encoder", "trex-detector"):
        engine = dst / f"{stem}{suffix}"
        shutil.copy2(src / f"{stem}.onnx", engine)
        manifest = read_sidecar(src / f"{stem}.onnx")
        write_sidecar(dataclasses.replace(manifest, backend="tensorrt"), engine)
        paths.append(engine)
    return paths


def test_prompted_detector_loads_engine_artifacts_through_the_tensorrt_backend(tmp_path, onnx_export, monkeypatch):
    onnx_enc, onnx_det = onnx_export / "trex-prompt-encoder.onnx", onnx_export / "trex-detector.onnx"
    enc, det = _as_engines(onnx_export, tmp_path / "trt")
    monkeypatch.setitem(BACKENDS._entries, "tensorrt", BackendEntry(
        "tensorrt", f"{__name__}:_OnnxRuntimeAsTensorRT", (".engine", ".plan"), "pip install 'edgedet[tensorrt]'"))
    prompt_image, box = frame(1), [[30, 20, 60, 50]]
    with PromptedDetector(onnx_enc, onnx_det, conf=0.0) as reference, PromptedDetector(enc, det, conf=0.0) as engines:
        assert engines.detector.name == "tensorrt" and engines.encoder.name == "tensorrt"
        for d in (reference, engines):
            d.set_prompts(prompt_image, boxes=box, names="patch", texts=["circle"])
        assert engines.prompt_names == ("patch", "circle")
        want, got = reference(frame(2)), engines(frame(2))
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    np.testing.assert_allclose(got.boxes_xyxy, want.boxes_xyxy, atol=1e-3)


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed")
def test_engine_artifacts_without_tensorrt_name_the_extra(tmp_path, onnx_export):
    from runtime.backends.base import BackendUnavailableError

    enc, det = _as_engines(onnx_export, tmp_path / "trt")
    with pytest.raises(BackendUnavailableError, match=r"edgedet\[tensorrt\]"):
        PromptedDetector(enc, det)


@pytest.mark.skipif(not HAVE_TENSORRT, reason="TensorRT is not installed here (engines are built on the device)")
def test_engines_match_onnx_runtime(tmp_path, model):
    from converters.tensorrt.plugin import find_library

    msda = "fused" if find_library() is not None else "trt_builtin"
    onnx_enc, onnx_det = export_prompted(model, tmp_path / "onnx", format="onnx", imgsz=(SIZE, SIZE), msda="gather",
                                         text_prompts=["circle"])
    enc, det = export_prompted(model, tmp_path / "trt", format="tensorrt", imgsz=(SIZE, SIZE), msda=msda,
                               text_prompts=["circle"])
    assert enc.suffix == det.suffix == ".engine"
    with PromptedDetector(onnx_enc, onnx_det, conf=0.0) as reference, \
            PromptedDetector(enc, det, device="cuda", conf=0.0) as engines:
        for d in (reference, engines):
            d.set_prompts(frame(1), boxes=[[30, 20, 60, 50]], names="patch", texts=["circle"])
        want, got = reference(frame(2)), engines(frame(2))
    np.testing.assert_allclose(got.scores[:10], want.scores[:10], atol=1e-3)
