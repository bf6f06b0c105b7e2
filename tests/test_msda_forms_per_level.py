"""ONNX export forms of MSDA with per-level point counts and the `discrete` method: the grid_sample
and gather forms run in ONNX Runtime and OpenVINO (no extension), the fused node carries both as
attributes and runs in OpenVINO with the extension; all against the `pytorch` specification."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from edgedet.ops import multi_scale_deformable_attention

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino")

from converters.onnx.msda_forms import FORM_TO_IMPL, FUSED_DOMAIN, FUSED_OPSET, register_fused_schema  # noqa: E402

SHAPES = [(12, 20), (6, 10), (3, 5)]  # wide levels: the upstream clamp of x by H matters
COUNTS = (4, 3, 2)  # RT-DETRv2
NAMES = ["value", "sampling_locations", "attention_weights"]
OV_F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # CPUs with bf16 units otherwise run MatMul in bf16


class Core(torch.nn.Module):
    def __init__(self, impl: str, counts, method: str):
        super().__init__()
        self.impl, self.counts, self.method = impl, counts, method

    def forward(self, value, loc, weights):
        return multi_scale_deformable_attention(
            value, SHAPES, loc, weights, impl=self.impl, num_points_per_level=self.counts, method=self.method
        )


def inputs(n=2, lq=13, m=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in SHAPES)
    k = sum(COUNTS)
    return (
        torch.randn(n, s, m, d, generator=g),
        torch.rand(n, lq, m, k, 2, generator=g) * 1.3 - 0.15,
        torch.rand(n, lq, m, k, generator=g),
    )


def export(tmp_path, form: str, method: str, example):
    path = tmp_path / f"msda_{form}_{method}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation and tracer notes
        torch.onnx.export(
            Core(FORM_TO_IMPL[form], COUNTS, method), example, str(path), dynamo=False, opset_version=17,
            input_names=NAMES, output_names=["output"],
            custom_opsets={FUSED_DOMAIN: FUSED_OPSET} if form == "fused" else None,
        )
    return path


def reference(example, method):
    return multi_scale_deformable_attention(*example[:1], SHAPES, *example[1:], num_points_per_level=COUNTS, method=method)


@pytest.mark.parametrize("method", ["default", "discrete"])
@pytest.mark.parametrize("form", ["grid_sample", "gather"])
def test_portable_forms_run_in_ort_and_openvino(tmp_path, form, method):
    example = inputs(seed=len(form) + len(method))
    path = export(tmp_path, form, method, example)
    op_types = [node.op_type for node in onnx.load(str(path)).graph.node]
    if form == "grid_sample" and method == "default":
        assert op_types.count("GridSample") == len(SHAPES)  # one per level, as the official export
    else:
        assert "GridSample" not in op_types
    feeds = {name: t.numpy() for name, t in zip(NAMES, example)}
    expected = reference(example, method).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, feeds)[0], expected, atol=1e-5, rtol=0)
    compiled = ov.Core().compile_model(str(path), "CPU", OV_F32)
    np.testing.assert_allclose(compiled(feeds)[0], expected, atol=1e-5, rtol=0)


@pytest.mark.openvino_ext
@pytest.mark.parametrize("method", ["default", "discrete"])
def test_fused_node_attributes_and_openvino_parity(tmp_path, method):
    from converters.openvino import extension

    example = inputs(seed=3)
    path = export(tmp_path, "fused", method, example)
    model = onnx.load(str(path))
    register_fused_schema()
    onnx.checker.check_model(model, full_check=True)
    (node,) = [n for n in model.graph.node if n.domain == FUSED_DOMAIN]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    expected_attributes = {"num_points_per_level": list(COUNTS)}
    if method != "default":
        expected_attributes["method"] = method.encode()
    assert attributes == expected_attributes
    with pytest.raises(Exception, match="MultiScaleDeformableAttention"):  # no ORT kernel: said, not hidden
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if not extension.is_available():
        pytest.skip("the OpenVINO MSDA extension is not built (scripts/build_ov_extension.sh)")
    core = ov.Core()
    core.add_extension(str(extension.library_path()))
    compiled = core.compile_model(str(path), "CPU", OV_F32)
    out = compiled({name: t.numpy() for name, t in zip(NAMES, example)})[0]
    np.testing.assert_allclose(out, reference(example, method).numpy(), atol=1e-5, rtol=0)


def test_fused_uniform_default_node_has_no_attributes(tmp_path):
    """Graphs of the DETR-family (uniform layout, bilinear) models stay exactly as before."""
    g = torch.Generator().manual_seed(5)
    value = torch.randn(1, 240 + 60 + 15, 2, 4, generator=g)
    loc = torch.rand(1, 6, 2, 3, 2, 2, generator=g)
    weights = torch.rand(1, 6, 2, 3, 2, generator=g)

    class Uniform(torch.nn.Module):
        def forward(self, v, sl, aw):
            return multi_scale_deformable_attention(v, SHAPES, sl, aw, impl="onnx_fused")

    path = tmp_path / "uniform.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Uniform(), (value, loc, weights), str(path), dynamo=False, opset_version=17,
                          custom_opsets={FUSED_DOMAIN: FUSED_OPSET})
    (node,) = [n for n in onnx.load(str(path)).graph.node if n.domain == FUSED_DOMAIN]
    assert len(node.attribute) == 0
