"""D-FINE deployment: the official fixture checkpoint, exported, reproduces D-FINE's own deploy outputs.

Chain: official checkpoint -> `convert_official(config=...)` -> `converters.export` (deploy fusion on
a copy, official top-k postprocess in graph) -> ONNX Runtime / OpenVINO FP32 == Peterande/D-FINE's
`model.deploy()` + `postprocessor.deploy()` outputs <= 1e-3, for the grid_sample, gather and fused
MSDA forms. FP16: the model computed in half precision and the FP16 IR agree with FP32.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from converters import export
from converters.onnx.msda_forms import form_available
from edgedet.checkpoints import convert_official
from runtime.manifest import read_sidecar

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "reference" / "dfine"
ATOL = 1e-3
pytestmark = pytest.mark.skipif(not (FIXTURE / "checkpoint.pth").is_file(), reason="D-FINE fixture not available")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    meta = json.loads((FIXTURE / "meta.json").read_text())
    out = tmp_path_factory.mktemp("dfine") / "ours.pth"
    convert_official(FIXTURE / "checkpoint.pth", out, config="dfine_hgnetv2_n_coco", updates=meta["config_updates"])
    return out, np.load(FIXTURE / "inputs.npz"), np.load(FIXTURE / "outputs.npz")


def check_deploy_outputs(got, outputs, img: str):
    labels, boxes, scores = got
    np.testing.assert_array_equal(labels, outputs[f"{img}.deploy.labels"])
    np.testing.assert_allclose(scores, outputs[f"{img}.deploy.scores"], atol=ATOL, rtol=0)
    # xyxy pixels of the network input (= the official orig_target_sizes here, no resize)
    np.testing.assert_allclose(boxes, outputs[f"{img}.deploy.boxes"], atol=ATOL * 192, rtol=0)


@pytest.mark.parametrize("form", ["grid_sample", "gather"])
def test_onnxruntime_reproduces_the_official_deploy_outputs(converted, form, tmp_path):
    import onnxruntime as ort

    ckpt, inputs, outputs = converted
    x = inputs["img1"]
    path = export(ckpt, "onnx", tmp_path / "m.onnx", imgsz=x.shape[-2:], msda=form, top_k=30, simplify=False)
    manifest = read_sidecar(path)
    assert manifest.family == "dfine" and manifest.preprocess.mean == (0.0, 0.0, 0.0) and manifest.preprocess.std == (1.0, 1.0, 1.0)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "TopK" in ops and ("GridSample" in ops) == (form == "grid_sample")
    # deploy mode in the graph: W(n) is a constant (no Pow chain), one LayerNormalization per LayerNorm (opset 17,
    # not the decomposed ReduceMean/Pow form whose x^2 overflows in FP16)
    assert "Pow" not in ops
    from edgedet.engine.checkpoint import load_model

    n_ln = sum(isinstance(m, torch.nn.LayerNorm) for m in load_model(ckpt).deploy().modules())
    assert ops.count("LayerNormalization") == n_ln
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    check_deploy_outputs(got, outputs, "img1")


def test_openvino_fused_reproduces_the_official_deploy_outputs(converted, tmp_path):
    ov = pytest.importorskip("openvino")
    from converters.openvino.convert import fused_extension_available, fused_extension_path

    if not fused_extension_available() or not form_available("fused"):
        pytest.skip("the fused OpenVINO MSDA extension is not built (scripts/build_ov_extension.sh)")
    ckpt, inputs, outputs = converted
    x = inputs["img0"]
    path = export(ckpt, "openvino", tmp_path / "m.xml", imgsz=x.shape[-2:], msda="fused", top_k=30, simplify=False)
    core = ov.Core()
    core.add_extension(str(fused_extension_path()))
    assert any(op.get_type_name() == "MultiScaleDeformableAttention" for op in core.read_model(str(path)).get_ops())
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    res = compiled({"images": x})
    check_deploy_outputs([res[compiled.output(i)] for i in range(3)], outputs, "img0")


def _match_fraction(boxes_a: np.ndarray, boxes_b: np.ndarray, iou_min: float = 0.95) -> float:
    """Fraction of boxes in a (xyxy) that have a box in b with IoU >= iou_min (order-free: FP16 may swap
    near-tied queries of this random-weight fixture, whose top-k gaps are ~1e-3)."""
    from edgedet.nn.box_ops import box_iou

    iou = box_iou(torch.from_numpy(boxes_a).float(), torch.from_numpy(boxes_b).float())[0]
    return float((iou.max(1).values >= iou_min).float().mean())


def test_fp16_arithmetic_stays_correct(converted):
    """Half-precision arithmetic end to end (PyTorch CPU half) against FP32."""
    from edgedet.engine.checkpoint import load_model
    from edgedet.nn.box_ops import box_cxcywh_to_xyxy

    ckpt, inputs, outputs = converted
    model = load_model(ckpt).deploy()
    for img in ("img0", "img1"):
        x = torch.from_numpy(inputs[img])
        with torch.no_grad():
            ref = model.float()(x)
            half = model.half()(x.half())
        assert torch.isfinite(half["pred_logits"]).all() and torch.isfinite(half["pred_boxes"]).all()
        a, b = (box_cxcywh_to_xyxy(o["pred_boxes"][0].float()).numpy() for o in (ref, half))
        assert _match_fraction(a, b) >= 0.9
        top_ref = ref["pred_logits"][0].sigmoid().amax(-1).sort(descending=True).values
        top_half = half["pred_logits"][0].float().sigmoid().amax(-1).sort(descending=True).values
        assert float((top_ref - top_half).abs().max()) < 5e-3


@pytest.mark.slow
def test_openvino_fp16_ir_stays_correct(converted, tmp_path):
    """FP16-compressed weights in OpenVINO vs the FP32 IR (and the FP32 IR vs the official outputs)."""
    ov = pytest.importorskip("openvino")
    ckpt, inputs, outputs = converted
    x = inputs["img1"]
    fp32 = export(ckpt, "openvino", tmp_path / "a.xml", imgsz=x.shape[-2:], msda="grid_sample", top_k=30, simplify=False)
    fp16 = export(ckpt, "openvino", tmp_path / "b.xml", imgsz=x.shape[-2:], msda="grid_sample", top_k=30, simplify=False,
                  precision="fp16")
    assert fp16.with_suffix(".bin").stat().st_size < 0.6 * fp32.with_suffix(".bin").stat().st_size
    core = ov.Core()
    got = []
    for path in (fp32, fp16):
        compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        res = compiled({"images": x})
        got.append([res[compiled.output(i)] for i in range(3)])
    check_deploy_outputs(got[0], outputs, "img1")
    (_, boxes32, scores32), (_, boxes16, scores16) = got
    assert np.isfinite(boxes16).all() and _match_fraction(boxes32[0], boxes16[0]) >= 0.9
    assert float(np.abs(scores32 - scores16).max()) < 5e-3


def test_int8_keeps_the_fdr_heads_float_and_stays_close(tmp_path):
    """ONNX Runtime INT8 (QDQ) with our recipe: offsets, attention weights and the FDR distribution / box
    heads stay float; boxes stay put except where a near-tied query selection flips (random tiny model)."""
    import onnxruntime as ort
    from converters.calibration import KEEP_FLOAT_PATTERNS, calibration_batches
    from converters.onnxruntime.quantize import QUANTIZED_OP_TYPES
    from export_helpers import build_tiny, torch_outputs, write_images

    model = build_tiny("dfine")
    calib = write_images(tmp_path / "calib", n=6)
    path = export(model, "onnx", tmp_path / "q.onnx", imgsz=(64, 96), precision="int8", calib=calib, msda="grid_sample",
                  postprocess=False, simplify=False)
    proto = onnx.load(str(path))
    producer = {o: n for n in proto.graph.node for o in n.output}
    fed_by_dq = lambda n: any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)  # noqa: E731
    compute = [n for n in proto.graph.node if n.op_type in QUANTIZED_OP_TYPES]
    kept = [n for n in compute if any(p in n.name for p in KEEP_FLOAT_PATTERNS)]
    assert any(fed_by_dq(n) for n in compute if n not in kept), "nothing was quantized"
    assert any("dec_bbox_head" in n.name for n in kept) and not any(fed_by_dq(n) for n in kept)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in (b["images"] for b in calibration_batches(calib, read_sidecar(path).preprocess, limit=3)):
        got, want = session.run(None, {"images": x}), torch_outputs(model, x, False)
        assert np.isfinite(got[0]).all() and np.isfinite(got[1]).all()
        nearest = np.abs(want[1][0][:, None, :] - got[1][0][None, :, :]).max(-1).min(1)
        assert (nearest < 0.02).mean() >= 0.6
        top = [np.sort(1 / (1 + np.exp(-o[0])).max(-1)) for o in (got[0], want[0])]
        assert np.abs(top[0] - top[1]).max() < 0.15
