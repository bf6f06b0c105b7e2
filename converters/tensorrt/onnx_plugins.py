"""Rewrite an ONNX graph's fused MSDA nodes for the TensorRT plugin that will run them.

The exporter writes `edgedet::MultiScaleDeformableAttention` (value, spatial_shapes,
level_start_index, sampling_locations, attention_weights -> [N, Lq, M*D]). TensorRT can run
it through either:
- `edgedet`: our plugin (libedgedet_trt_msda.so). TensorRT 8.6 plugins take INT32 index
  tensors only, so the int64 shape inputs get a Cast. The node's attributes
  (`num_points_per_level`, `method`: per-level point counts and discrete sampling) are kept.
- `trt_builtin`: TensorRT's own `MultiscaleDeformableAttnPlugin_TRT` (TensorRT >= 8.4.1; version
  "1" = IPluginV2DynamicExt, "2" = IPluginV3), no attributes, INT32 index tensors, output
  [N, Lq, M, D], which a Reshape turns back into [N, Lq, M*D]. Needs no compilation. It knows
  only the uniform layout with bilinear sampling: per-level point counts that are all equal are
  reshaped into that layout; unequal counts or `method="discrete"` raise an error naming the
  `fused` form (our plugin) instead.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import onnx
from onnx import TensorProto, helper

FUSED_DOMAIN = "edgedet"
FUSED_OP = "MultiScaleDeformableAttention"
TRT_BUILTIN_OP = "MultiscaleDeformableAttnPlugin_TRT"
TARGETS = ("edgedet", "trt_builtin")


def fused_nodes(model: onnx.ModelProto) -> List[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == FUSED_DOMAIN and n.op_type == FUSED_OP]


class BuiltinPluginUnsupported(ValueError):
    """The fused node needs what TensorRT's built-in MSDA plugin cannot do."""


def node_options(node: onnx.NodeProto):
    """(num_points_per_level or None, method) from a fused node's attributes."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    points = attrs.get("num_points_per_level")
    method = attrs.get("method", b"default")
    method = method.decode() if isinstance(method, bytes) else str(method)
    return (list(points) if points is not None else None), method


def builtin_layout(points: Optional[Sequence[int]], method: str, name: str) -> Optional[tuple]:
    """(L, P) to reshape a per-level node into the built-in plugin's uniform layout, None if already uniform."""
    if method != "default":
        raise BuiltinPluginUnsupported(
            f"MSDA node {name} uses method='{method}', which TensorRT's built-in MultiscaleDeformableAttnPlugin_TRT "
            "cannot do; export with msda='fused' (our plugin runs it)")
    if points is None:
        return None
    if len(set(points)) != 1:
        raise BuiltinPluginUnsupported(
            f"MSDA node {name} has per-level point counts {list(points)}, which TensorRT's built-in "
            "MultiscaleDeformableAttnPlugin_TRT cannot do (it takes one count for all levels); export with msda='fused'")
    return len(points), points[0]


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
        if target == "edgedet":
            plugin = helper.make_node(FUSED_OP, [value, shapes32, starts32, locs, weights], list(node.output), name=base,
                                      domain=FUSED_DOMAIN)
            plugin.attribute.extend(node.attribute)  # num_points_per_level / method travel to the plugin
            new_nodes.append(plugin)
            continue
        layout = builtin_layout(*node_options(node), base)
        if layout is not None:  # equal per-level counts: the same memory in the uniform layout
            num_levels, num_points = layout
            for src, dims, tag in ((locs, [0, 0, 0, num_levels, num_points, 2], "locations"),
                                   (weights, [0, 0, 0, num_levels, num_points], "weights")):
                shape_name = f"{base}/uniform_{tag}_shape"
                graph.initializer.append(helper.make_tensor(shape_name, TensorProto.INT64, [len(dims)], dims))
                new_nodes.append(helper.make_node("Reshape", [src, shape_name], [f"{base}/uniform_{tag}"],
                                                  name=f"{base}/uniform_{tag}"))
            locs, weights = f"{base}/uniform_locations", f"{base}/uniform_weights"
        inputs = [value, shapes32, starts32, locs, weights]
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
