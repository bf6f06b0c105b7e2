"""RT-DETRv2 deployment: the official fixture checkpoint, exported, reproduces the official outputs.

Chain: official checkpoint -> `convert-checkpoint --config` -> `converters.export` (RepVGG fused,
official postprocessor in graph) -> ONNX Runtime / OpenVINO FP32 == lyuwenyu/RT-DETR's own
outputs ≤ 1e-3, for every MSDA form that supports RT-DETRv2's per-level points and method.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from converters import export
from converters.onnx.msda_forms import form_available
from edgedet.checkpoints import convert_official
from edgedet.registry import MSDA_IMPLS
from runtime.manifest import read_sidecar

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "reference"
ATOL = 1e-3


def supports_rtdetr(form: str, method: str) -> bool:
    """Whether the MSDA impl behind `form` does per-level points with `method` (it raises NotImplementedError if not)."""
    import torch

    from converters.onnx.msda_forms import FORM_TO_IMPL

    if not form_available(form):
        return False
    value = torch.zeros(1, 5, 1, 2)
    try:
        MSDA_IMPLS.get(FORM_TO_IMPL[form])(value, [(1, 1), (2, 2)], None, torch.full((1, 1, 1, 3, 2), 0.5),
                                           torch.ones(1, 1, 1, 3), num_points_per_level=(1, 2), method=method)
    except NotImplementedError:
        return False
    return True


@pytest.fixture(scope="module", params=["rtdetrv2", "rtdetrv2_discrete"])
def converted(request, tmp_path_factory):
    d = REFERENCE / request.param
    if not (d / "checkpoint.pth").is_file():
        pytest.skip(f"{d} not available")
    meta = json.loads((d / "meta.json").read_text())
    out = tmp_path_factory.mktemp(request.param) / "ours.pth"
    convert_official(d / "checkpoint.pth", out, config="rtdetrv2_r18vd", updates=meta["config_updates"])
    return d, out, meta


def reference(d: Path, img: str):
    inputs, outputs = np.load(d / "inputs.npz"), np.load(d / "outputs.npz")
    return inputs[img], outputs


def check_outputs(got, outputs, img: str):
    labels, boxes, scores = got
    np.testing.assert_array_equal(labels, outputs[f"{img}.deploy.labels"])
    np.testing.assert_allclose(scores, outputs[f"{img}.deploy.scores"], atol=ATOL, rtol=0)
    # boxes: xyxy pixels of the network input; the official graph scales by orig_target_sizes = input size
    np.testing.assert_allclose(boxes, outputs[f"{img}.deploy.boxes"], atol=ATOL * 160, rtol=0)


@pytest.mark.parametrize("form", ["grid_sample", pytest.param("gather", marks=pytest.mark.slow)])  # gather: ~12 s each
def test_onnxruntime_reproduces_the_official_deploy_outputs(converted, form, tmp_path):
    import onnxruntime as ort

    d, ckpt, meta = converted
    method = "discrete" if "discrete" in d.name else "default"
    if not supports_rtdetr(form, method):
        pytest.skip(f"MSDA form '{form}' does not yet support per-level points with method='{method}'")
    x, outputs = reference(d, "img1")
    path = export(ckpt, "onnx", tmp_path / "m.onnx", imgsz=x.shape[-2:], msda=form, top_k=30, simplify=False)
    manifest = read_sidecar(path)
    assert manifest.family == "rtdetr" and manifest.preprocess.mean == (0.0, 0.0, 0.0)
    assert manifest.preprocess.std == (1.0, 1.0, 1.0) and manifest.outputs.score_activation == "sigmoid"
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "TopK" in ops and ("GridSample" in ops) == (form == "grid_sample" and method == "default")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    check_outputs(got, outputs, "img1")


@pytest.mark.slow  # ~35 s a fixture on 2 cores: export + OpenVINO conversion of an 11.8M-parameter model
def test_openvino_fp32_reproduces_the_official_outputs(converted, tmp_path):
    ov = pytest.importorskip("openvino")
    d, ckpt, _ = converted
    x, outputs = reference(d, "img0")
    path = export(ckpt, "openvino", tmp_path / "m.xml", imgsz=x.shape[-2:], msda="grid_sample", postprocess=False,
                  simplify=False)
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    res = compiled({"images": x})
    logits, boxes = (res[compiled.output(i)] for i in range(2))
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    np.testing.assert_allclose(sig(logits), sig(outputs["img0.deploy.pred_logits"]), atol=ATOL, rtol=0)
    np.testing.assert_allclose(boxes, outputs["img0.deploy.pred_boxes"], atol=ATOL, rtol=0)


@pytest.mark.slow
def test_openvino_fused_reproduces_the_official_outputs(converted, tmp_path):
    ov = pytest.importorskip("openvino")
    from converters.openvino.convert import fused_extension_available, fused_extension_path

    d, ckpt, _ = converted
    method = "discrete" if "discrete" in d.name else "default"
    if not fused_extension_available() or not supports_rtdetr("fused", method):
        pytest.skip(f"fused MSDA does not yet support per-level points with method='{method}'")
    x, outputs = reference(d, "img1")
    path = export(ckpt, "openvino", tmp_path / "m.xml", imgsz=x.shape[-2:], msda="fused", top_k=30, simplify=False)
    core = ov.Core()
    core.add_extension(str(fused_extension_path()))
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    res = compiled({"images": x})
    check_outputs([res[compiled.output(i)] for i in range(3)], outputs, "img1")
