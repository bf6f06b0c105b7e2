"""TensorRT path, the parts that run without TensorRT or a GPU.

- the framework-free CUDA kernel compiles with nvcc (skipped without nvcc);
- (the plugins against TensorRT's headers: tests/test_tensorrt_host.py);
- ONNX graphs rewritten for our plugin and for TensorRT's built-in plugin are valid and have
  exactly the inputs, types and shapes those plugins expect;
- without TensorRT, building an engine fails with a clear message and the runtime backend
  names the extra to install.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from converters.tensorrt.onnx_plugins import FUSED_DOMAIN, FUSED_OP, TRT_BUILTIN_OP, rewrite_for_tensorrt

REPO = Path(__file__).resolve().parents[1]
KERNEL_DIR = REPO / "edgedet" / "ops" / "csrc"

N, M, D, LQ, P = 1, 2, 8, 7, 3
LEVELS = [(8, 10), (4, 5)]
S = sum(h * w for h, w in LEVELS)


def fused_graph(points=None, method=None) -> onnx.ModelProto:
    """A graph with one edgedet::MultiScaleDeformableAttention node, as the exporter writes it
    (uniform layout, or per level with `points` and the node attributes of converters/onnx/msda_forms.py)."""
    k = [len(LEVELS), P] if points is None else [sum(points)]
    inputs = [
        helper.make_tensor_value_info("value", TensorProto.FLOAT, [N, S, M, D]),
        helper.make_tensor_value_info("sampling_locations", TensorProto.FLOAT, [N, LQ, M, *k, 2]),
        helper.make_tensor_value_info("attention_weights", TensorProto.FLOAT, [N, LQ, M, *k]),
    ]
    starts = np.cumsum([0] + [h * w for h, w in LEVELS[:-1]])
    inits = [
        helper.make_tensor("spatial_shapes", TensorProto.INT64, [len(LEVELS), 2], np.array(LEVELS).ravel().tolist()),
        helper.make_tensor("level_start_index", TensorProto.INT64, [len(LEVELS)], starts.tolist()),
    ]
    node = helper.make_node(
        FUSED_OP,
        ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"],
        ["output"],
        name="msda0",
        domain=FUSED_DOMAIN,
    )
    if points is not None:
        node.attribute.append(helper.make_attribute("num_points_per_level", list(points)))
    if method is not None:
        node.attribute.append(helper.make_attribute("method", method))
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [N, LQ, M * D])
    graph = helper.make_graph([node], "msda", inputs, [out], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(FUSED_DOMAIN, 1)])


def _input_types(model: onnx.ModelProto, node: onnx.NodeProto):
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    inits = {t.name: t for t in inferred.graph.initializer}
    types = []
    for name in node.input:
        if name in infos:
            t = infos[name].type.tensor_type
            types.append((t.elem_type, [d.dim_value for d in t.shape.dim]))
        else:
            types.append((inits[name].data_type, list(inits[name].dims)))
    return types


def test_rewrite_for_edgedet_plugin_casts_index_inputs_to_int32():
    model = rewrite_for_tensorrt(fused_graph(), target="edgedet")
    onnx.checker.check_model(model, full_check=False)
    (node,) = [n for n in model.graph.node if n.op_type == FUSED_OP]
    assert node.domain == FUSED_DOMAIN and len(node.input) == 5 and list(node.output) == ["output"]
    assert not node.attribute
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2 and all(a.i == TensorProto.INT32 for c in casts for a in c.attribute)
    types = _input_types(model, node)
    assert types[0] == (TensorProto.FLOAT, [N, S, M, D])
    assert types[1] == (TensorProto.INT32, [len(LEVELS), 2])
    assert types[2] == (TensorProto.INT32, [len(LEVELS)])
    assert types[3] == (TensorProto.FLOAT, [N, LQ, M, len(LEVELS), P, 2])
    assert types[4] == (TensorProto.FLOAT, [N, LQ, M, len(LEVELS), P])


@pytest.mark.parametrize("version", ["1", "2"])
def test_rewrite_for_tensorrt_builtin_plugin(version):
    model = rewrite_for_tensorrt(fused_graph(), target="trt_builtin", builtin_version=version)
    onnx.checker.check_model(model, full_check=False)
    (node,) = [n for n in model.graph.node if n.op_type == TRT_BUILTIN_OP]
    # The built-in plugin has no attributes of its own; only the parser's plugin_version.
    assert {a.name: helper.get_attribute_value(a) for a in node.attribute} == {"plugin_version": version.encode()}
    types = _input_types(model, node)
    assert [t[0] for t in types] == [TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT32, TensorProto.FLOAT, TensorProto.FLOAT]
    assert types[0][1] == [N, S, M, D] and types[3][1] == [N, LQ, M, len(LEVELS), P, 2]
    # Its [N, Lq, M, D] output is reshaped back to the graph's [N, Lq, M*D].
    (reshape,) = [n for n in model.graph.node if n.op_type == "Reshape"]
    assert reshape.input[0] == node.output[0] and list(reshape.output) == ["output"]
    shape = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}[reshape.input[1]]
    assert shape.tolist() == [0, 0, -1]


@pytest.mark.parametrize("points,method", [((4, 3), None), ((2, 2), "discrete"), (None, "discrete")])
def test_rewrite_for_edgedet_plugin_keeps_per_level_and_method_attributes(points, method):
    model = rewrite_for_tensorrt(fused_graph(points, method), target="edgedet")
    onnx.checker.check_model(model, full_check=False)
    (node,) = [n for n in model.graph.node if n.op_type == FUSED_OP]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs.get("num_points_per_level") == (list(points) if points else None)
    assert attrs.get("method") == (method.encode() if method else None)
    types = _input_types(model, node)
    assert [t[0] for t in types][1:3] == [TensorProto.INT32, TensorProto.INT32]


def test_builtin_plugin_takes_equal_per_level_counts_as_the_uniform_layout():
    model = rewrite_for_tensorrt(fused_graph((2, 2)), target="trt_builtin")
    onnx.checker.check_model(model, full_check=False)
    (node,) = [n for n in model.graph.node if n.op_type == TRT_BUILTIN_OP]
    types = _input_types(model, node)
    assert types[3] == (TensorProto.FLOAT, [N, LQ, M, len(LEVELS), 2, 2])
    assert types[4] == (TensorProto.FLOAT, [N, LQ, M, len(LEVELS), 2])


@pytest.mark.parametrize("points,method,match", [((4, 3), None, r"point counts \[4, 3\]"),
                                                 (None, "discrete", "discrete")])
def test_builtin_plugin_refuses_what_it_cannot_do(points, method, match):
    from converters.tensorrt.onnx_plugins import BuiltinPluginUnsupported

    with pytest.raises(BuiltinPluginUnsupported, match=match) as err:
        rewrite_for_tensorrt(fused_graph(points, method), target="trt_builtin")
    assert "msda='fused'" in str(err.value)


def test_rewrite_rejects_unknown_target():
    with pytest.raises(ValueError, match="trt_builtin"):
        rewrite_for_tensorrt(fused_graph(), target="nvidia")


# The launchers the TensorRT plugins call (msda_plugin_common.h: FP32 or FP16 values with FP32
# locations and weights; int32 or int64 indices) and the PyTorch binding's mixed-precision ones.
PLUGIN_LAUNCHERS = ["msda_forward<float, float, int>", "msda_forward<__half, float, int>",
                    "msda_forward<float, float, long>", "msda_forward<__half, float, long>",
                    "msda_forward<__nv_bfloat16, float, long>", "msda_backward<__half, float, long, float>"]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_kernel_compiles_with_nvcc(tmp_path):
    """The kernel file includes no TensorRT/PyTorch header, so plain nvcc -c builds it, warning-free,
    with the launchers the plugins and the binding link against."""
    proc = subprocess.run(
        ["nvcc", "-std=c++17", "-Werror", "all-warnings", "-Xcompiler", "-Wall", "-c",
         str(KERNEL_DIR / "msda_kernel.cu"), "-o", str(tmp_path / "k.o")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    if shutil.which("nm") is None:
        pytest.skip("nm not installed")
    symbols = subprocess.run(["nm", "-C", str(tmp_path / "k.o")], capture_output=True, text=True).stdout
    defined = [line for line in symbols.splitlines() if " W " in line or " T " in line]
    for launcher in PLUGIN_LAUNCHERS:
        assert any(f"edgedet::{launcher}(" in line for line in defined), launcher


def test_engine_builder_without_tensorrt_says_what_to_do():
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    from converters.tensorrt.builder import TensorRTUnavailableError, import_tensorrt

    with pytest.raises(TensorRTUnavailableError, match="dry"):
        import_tensorrt()


def test_runtime_tensorrt_backend_names_the_extra(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    from runtime.backends.base import BACKENDS, BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match=r"edgedet\[tensorrt\]"):
        BACKENDS.create("tensorrt")


def _tiny_deformable():
    import edgedet

    return edgedet.create_model("deformable_detr", backbone="resnet18", num_classes=3, hidden_dim=64, nheads=4,
                                enc_layers=1, dec_layers=1, dim_feedforward=64, num_queries=10, num_feature_levels=4,
                                enc_n_points=2, dec_n_points=2).eval()


@pytest.mark.parametrize("msda,op", [("fused", FUSED_OP), ("trt_builtin", TRT_BUILTIN_OP)])
def test_dry_run_writes_the_onnx_tensorrt_would_parse(tmp_path, msda, op):
    from converters import export

    path = export(_tiny_deformable(), format="tensorrt", output=tmp_path / "model.engine", imgsz=(64, 96), msda=msda,
                  dry_run=True, simplify=False)
    assert path == tmp_path / "model.onnx" and not (tmp_path / "model.engine").exists()
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=False)
    nodes = [n for n in model.graph.node if n.op_type == op]
    assert len(nodes) == 2  # one encoder and one decoder layer
    assert not any(n.op_type == "GridSample" for n in model.graph.node)
    for node in nodes:
        types = _input_types(model, node)
        assert [t[0] for t in types] == [TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT32,
                                         TensorProto.FLOAT, TensorProto.FLOAT]
        assert len(types[0][1]) == 4 and len(types[3][1]) == 6 and len(types[4][1]) == 5
        assert types[1][1] == [4, 2]  # four levels of (H, W)


def test_trt_builtin_form_is_tensorrt_only():
    from converters import export
    from converters.formats import ExportError

    with pytest.raises(ExportError, match="not supported for format 'onnx'"):
        export(_tiny_deformable(), format="onnx", msda="trt_builtin", imgsz=(64, 64))


def test_dry_run_int8_writes_tensorrt_explicit_qdq_graph(tmp_path):
    """TensorRT 10's explicit quantization: symmetric INT8 Q/DQ around Conv/MatMul, plugin nodes kept,
    DETR-sensitive projections left in float; calibrated with ONNX Runtime on the portable form."""
    from converters import export
    from converters.calibration import KEEP_FLOAT_PATTERNS

    calib = np.random.default_rng(0).uniform(-2, 2, (4, 3, 64, 96)).astype(np.float32)
    path = export(_tiny_deformable(), format="tensorrt", output=tmp_path / "model.engine", imgsz=(64, 96),
                  msda="fused", precision="int8", calib=calib, dry_run=True, simplify=False)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=False)
    nodes = list(model.graph.node)
    assert len([n for n in nodes if n.op_type == FUSED_OP and n.domain == FUSED_DOMAIN]) == 2
    quants = [n for n in nodes if n.op_type == "QuantizeLinear"]
    assert len(quants) > 10
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for q in quants:  # TensorRT takes symmetric INT8 only: zero points of 0
        zp = inits[q.input[2]]
        assert zp.dtype == np.int8 and not zp.any()
    producer = {o: n for n in nodes for o in n.output}
    quantized_convs = [n for n in nodes if n.op_type == "Conv" and producer.get(n.input[0]) is not None
                       and producer[n.input[0]].op_type == "DequantizeLinear"]
    assert quantized_convs, "the backbone's convolutions are quantized"
    for n in nodes:  # kept in float: their activation inputs come straight from float tensors
        if n.op_type in ("MatMul", "Gemm") and any(p in n.name for p in KEEP_FLOAT_PATTERNS):
            src = producer.get(n.input[0])
            assert src is None or src.op_type != "DequantizeLinear", n.name
    assert not (tmp_path / "model.engine").exists()
