"""INT8 artifacts (ONNX Runtime QDQ, OpenVINO NNCF): MSDA-sensitive layers stay float, outputs stay close."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest

from converters import export
from converters.calibration import KEEP_FLOAT_PATTERNS, calibration_batches
from converters.onnxruntime.quantize import QUANTIZED_OP_TYPES
from export_helpers import build_tiny, feeds, graph_inputs, model_params, probs, torch_outputs, write_images
from runtime.manifest import read_sidecar

HW = (64, 96)
MODELS = ["tiny_msda"] + [n for n in ("deformable_detr", "dino") if (n, "grid_sample") in model_params()]


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("calib"), n=6)


def assert_close_loosely(model, got, want):
    """INT8 moves scores a little; boxes must stay close (box heads are kept float).

    Compared without regard to query order: two-stage models pick their queries by score,
    so a small score change can reorder them or swap the last one.
    """
    for g_box, w_box, g_log, w_log in zip(got[1], want[1], got[0], want[0]):
        nearest = np.abs(w_box[:, None, :] - g_box[None, :, :]).max(-1).min(1)  # [Q] distance to the closest box
        # two-stage models may swap a proposal at the top-K boundary: most boxes, not all, must match
        assert (nearest < 0.02).mean() >= 0.8, f"only {(nearest < 0.02).mean():.0%} of the boxes stayed put"
        g_top = np.sort(probs(g_log, model.score_activation).max(-1))
        w_top = np.sort(probs(w_log, model.score_activation).max(-1))
        assert np.abs(g_top - w_top).max() < 0.15


def is_kept(name):
    return any(p in name for p in KEEP_FLOAT_PATTERNS)


@pytest.mark.parametrize("name", MODELS)
def test_onnxruntime_int8_qdq(tmp_path, calib, name):
    model = build_tiny(name)
    path = export(model, "onnx", tmp_path / "q.onnx", imgsz=HW, precision="int8", calib=calib, msda="grid_sample",
                  postprocess=False, simplify=False)
    proto = onnx.load(str(path))
    producer = {o: n for n in proto.graph.node for o in n.output}
    compute = [n for n in proto.graph.node if n.op_type in QUANTIZED_OP_TYPES]
    dq_fed = lambda n: any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)  # noqa: E731
    assert any(dq_fed(n) for n in compute if not is_kept(n.name)), "nothing was quantized"
    kept = [n for n in compute if is_kept(n.name)]
    assert kept and not any(dq_fed(n) for n in kept), "MSDA offsets / attention weights / box heads must stay float"
    assert read_sidecar(path).precision == "int8"
    assert {p.key for p in proto.metadata_props} == {"edgedet"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in (b["images"] for b in calibration_batches(calib, read_sidecar(path).preprocess, limit=3)):
        assert_close_loosely(model, session.run(None, feeds(graph_inputs(session), x)), torch_outputs(model, x, False))


@pytest.mark.skipif("dino" not in MODELS, reason="DINO cannot export here")
def test_onnxruntime_int8_simplified_dino_runs(tmp_path, calib):
    """Simplification folds DINO's first-layer values (from the learned queries) into a 4-D
    constant; that MatMul must stay float or ORT refuses the per-channel QLinearMatMul."""
    model = build_tiny("dino")
    path = export(model, "onnx", tmp_path / "q.onnx", imgsz=HW, precision="int8", calib=calib, msda="grid_sample",
                  postprocess=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = calibration_batches(calib, read_sidecar(path).preprocess, limit=1)[0]["images"]
    assert_close_loosely(model, session.run(None, feeds(graph_inputs(session), x)), torch_outputs(model, x, False))


@pytest.mark.parametrize("name", MODELS)
def test_openvino_int8_nncf(tmp_path, calib, name):
    model = build_tiny(name)
    path = export(model, "openvino", tmp_path / "q.xml", imgsz=HW, precision="int8", calib=calib, msda="grid_sample",
                  postprocess=False, simplify=False)
    core = ov.Core()
    graph = core.read_model(str(path))
    ops = graph.get_ops()
    assert any(op.get_type_name() == "FakeQuantize" for op in ops), "nothing was quantized"
    for op in ops:
        if op.get_type_name() == "MatMul" and is_kept(op.get_friendly_name()):
            producers = [op.input_value(i).get_node().get_type_name() for i in range(op.get_input_size())]
            assert "FakeQuantize" not in producers, f"{op.get_friendly_name()} must stay float"
    assert read_sidecar(path).precision == "int8"
    compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for x in (b["images"] for b in calibration_batches(calib, read_sidecar(path).preprocess, limit=3)):
        res = compiled(feeds(graph_inputs(compiled), x))
        assert_close_loosely(model, [res[compiled.output(0)], res[compiled.output(1)]], torch_outputs(model, x, False))


def _activation_scales(path):
    proto = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    return {n.input[0]: inits[n.input[1]] for n in proto.graph.node if n.op_type == "QuantizeLinear"}


def test_onnxruntime_calibration_in_strides_equals_one_pass(tmp_path, calib, monkeypatch):
    """16 images fold in strides of 8 into the same ranges as one pass over all of them."""
    import converters.onnxruntime.quantize as q

    model = build_tiny("tiny_msda")
    float_path = export(model, "onnx", tmp_path / "f.onnx", imgsz=HW, msda="grid_sample", postprocess=False,
                        simplify=False)
    batches = calibration_batches(calib, read_sidecar(float_path).preprocess, limit=6) * 3  # 18 = 6 x 3
    batches = batches[:16]
    assert q.calibration_stride(16) == 8 and q.calibration_stride(205) == 5 and q.calibration_stride(7) == 7
    strided = _activation_scales(q.quantize_onnx_int8(float_path, tmp_path / "s.onnx", batches))
    monkeypatch.setattr(q, "calibration_stride", lambda n: n)
    whole = _activation_scales(q.quantize_onnx_int8(float_path, tmp_path / "w.onnx", batches))
    assert strided.keys() == whole.keys() and strided
    for name in whole:
        np.testing.assert_allclose(strided[name], whole[name], rtol=1e-6)


def _quantized(output, depth=0) -> bool:
    """Fed by a FakeQuantize, through the ops that pass INT8 on unchanged (a max-pool after the stem)."""
    node = output.get_node()
    if node.get_type_name() == "FakeQuantize":
        return True
    return depth < 4 and node.get_type_name() in ("MaxPool", "Reshape", "Transpose") and _quantized(node.input_value(0), depth + 1)


@pytest.mark.slow
@pytest.mark.skipif("dino" not in MODELS, reason="DINO cannot export here")
def test_openvino_int8_recipe_keeps_attention_products_float_and_convolutions_int8(tmp_path, calib):
    """The edgedet recipe: convolutions and FFN linears quantized, Q.K^T / softmax.V (two activations) float;
    without its ignore list NNCF quantizes the softmax probabilities: caught here."""
    from converters.api import make_manifest
    from converters.onnx.export import export_onnx
    from converters.openvino.quantize import DEFAULT_RECIPE, attention_products, quantize_int8

    model = build_tiny("dino")
    manifest = make_manifest(model, "openvino", "int8", "grid_sample", HW, 1, False, 100, None, {})
    onnx_path = export_onnx(model, tmp_path / "f.onnx", HW, manifest, "grid_sample", postprocess=False, simplify=False)
    # the decoder's Q.K^T and softmax.V, as ov.convert_model (the export's path) leaves them: MatMuls or one fused
    # ScaledDotProductAttention
    products = attention_products(ov.convert_model(str(onnx_path)))
    assert products and all("self_attn/MatMul" in n for n in products)
    batches = calibration_batches(calib, manifest, 4)

    def quantize(recipe):
        graph = quantize_int8(ov.convert_model(str(onnx_path)), batches, recipe)
        return {op.get_friendly_name(): op for op in graph.get_ops()}

    def inputs_quantized(ops, name):
        return [_quantized(ops[name].input_value(i)) for i in range(min(2, ops[name].get_input_size()))]

    ops = quantize(DEFAULT_RECIPE)
    assert not any(q for n in products for q in inputs_quantized(ops, n)), "attention products must stay float"
    convs = [_quantized(op.input_value(0)) for name, op in ops.items() if op.get_type_name() == "Convolution" and "backbone" in name]
    assert convs and all(convs), "every backbone convolution must run INT8"
    ffn = [op for name, op in ops.items() if op.get_type_name() == "MatMul" and "linear1" in name]
    assert ffn and all(_quantized(op.input_value(0)) for op in ffn), "FFNs must run INT8"
    # without the ignore list NNCF quantizes them
    plain = quantize(dataclasses.replace(DEFAULT_RECIPE, float_attention_products=False))
    assert all(any(inputs_quantized(plain, n)) for n in products)
