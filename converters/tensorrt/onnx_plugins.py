"""Rewrite an ONNX graph's fused MSDA nodes for the TensorRT plugin that will run them.

The exporter writes `edgedet::MultiScaleDeformableAttention` (value, spatial_shapes,
level_start_index, sampling_locations, attention_weights -> [N, Lq, M*D]). TensorRT can run
it through either:
- `edgedet`: our plugin (libedgedet_trt_msda.so). TensorRT 8.6 plugins take INT32 index
  tensors only, so the int64 shape inputs get a Cast.
- `trt_builtin`: TensorRT's own `MultiscaleDeformableAttnPlugin_TRT` (TensorRT >= 8.4.1; version
  "1" = IPluginV2DynamicExt, "2" = IPluginV3), no attributes, INT32 index tensors, output
  [N, Lq, M, D], which a Reshape turns back into [N, Lq, M*D]. Needs no compilation.
"""
from __future__ import annotations

from typing import List

import onnx
from onnx import TensorProto, helper

FUSED_DOMAIN = "edgedet"
FUSED_OP = "MultiScaleDeformableAttention"
TRT_BUILTIN_OP = "MultiscaleDeformableAttnPlugin_TRT"
TARGETS = ("edgedet", "trt_builtin")


def fused_nodes(model: onnx.ModelProto) -> List[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == FUSED_DOMAIN and n.op_type == FUSED_OP]


def rewrite_for_tensorrt(model: onnx.ModelProto, target: str = "edgedet", builtin_version: str = "1") -> onnx.ModelProto:
    """Return a copy of `model` whose fused MSDA nodes fit `target` (see module docstring)."""
    if target not in TARGETS:
        raise ValueError(f"unknown TensorRT MSDA target '{target}'; valid: {', '.join(TARGETS)}")
    if builtin_version not in ("1", "2"):
        raise ValueError("TensorRT's built-in MSDA plugin has versions '1' (IPluginV2DynamicExt) and '2' (IPluginV3)")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    new_nodes: List[onnx.NodeProto] = []
    for node in graph.node:
        if not (node.domain == FUSED_DOMAIN and node.op_type == FUSED_OP):
            new_nodes.append(node)
            continue
        base = node.name or f"msda_{len(new_nodes)}"
        value, shapes, starts, locs, weights = node.input
        shapes32, starts32 = f"{base}/spatial_shapes_i32", f"{base}/level_start_index_i32"
        new_nodes.append(helper.make_node("Cast", [shapes], [shapes32], name=f"{base}/cast_shapes", to=TensorProto.INT32))
        new_nodes.append(helper.make_node("Cast", [starts], [starts32], name=f"{base}/cast_starts", to=TensorProto.INT32))
        inputs = [value, shapes32, starts32, locs, weights]
        if target == "edgedet":
            new_nodes.append(helper.make_node(FUSED_OP, inputs, list(node.output), name=base, domain=FUSED_DOMAIN))
            continue
        # Built-in plugin: output [N, Lq, M, D]; reshape to [N, Lq, M*D] with the batch and
        # query dims copied (0) and the channels merged (-1).
        raw = f"{base}/msda_4d"
        plugin = helper.make_node(TRT_BUILTIN_OP, inputs, [raw], name=base, domain="trt.plugins")
        plugin.attribute.append(helper.make_attribute("plugin_version", builtin_version))
        new_nodes.append(plugin)
        shape_name = f"{base}/merge_heads_shape"
        graph.initializer.append(helper.make_tensor(shape_name, TensorProto.INT64, [3], [0, 0, -1]))
        new_nodes.append(helper.make_node("Reshape", [raw, shape_name], list(node.output), name=f"{base}/merge_heads"))
    del graph.node[:]
    graph.node.extend(new_nodes)
    domains = {o.domain for o in out.opset_import}
    wanted = "trt.plugins" if target == "trt_builtin" else FUSED_DOMAIN
    if wanted not in domains:
        out.opset_import.append(helper.make_opsetid(wanted, 1))
    return out
