"""The three ways multi-scale deformable attention (MSDA) reaches an ONNX graph.

    grid_sample  the `pytorch` reference impl: one GridSample per level (runs everywhere). With
                 per-level point counts it is the official RT-DETRv2 export's decomposition
                 (split per level, GridSample, Concat, weighted ReduceSum); `discrete` exports as
                 Cast + Clip + GatherElements instead of GridSample.
    gather       the `gather` impl (`edgedet.ops.msda_gather`): integer Gather + bilinear math,
                 for backends whose GridSample is slow or missing
    fused        one custom node `edgedet::MultiScaleDeformableAttention` (domain opset 1)
                 with inputs (value [N,S,M,D] f32, spatial_shapes [L,2] i64,
                 level_start_index [L] i64, sampling_locations, attention_weights) -> [N,Lq,M*D] f32;
                 uniform layout: locations [N,Lq,M,L,P,2], weights [N,Lq,M,L,P];
                 per-level layout: locations [N,Lq,M,K,2], weights [N,Lq,M,K], K = sum(P_l).
                 Optional attributes: `num_points_per_level` (ints, present iff per-level layout)
                 and `method` (string, present iff not "default": "discrete"); a uniform default
                 node has no attributes, exactly as before. Backends run it with the OpenVINO
                 extension / TensorRT plugin; ONNX Runtime has no kernel for it.

The fused form is an MSDA impl named `onnx_fused`: eagerly it computes the reference
(so tracing sees real values and shapes), and its autograd Function carries a `symbolic`
that the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`) turns into the node.
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Dict, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from edgedet.nn.ms_deform_attn import MSDeformAttn, set_msda_impl
from edgedet.ops.msda import (
    METHODS,
    Shapes,
    level_start_index_from_shapes,
    msda_pytorch,
    spatial_shapes_as_list,
)
from edgedet.registry import MSDA_IMPLS

from converters.formats import ExportError

FUSED_DOMAIN = "edgedet"
FUSED_OP = "MultiScaleDeformableAttention"
FUSED_OPSET = 1

# export form -> MSDA impl name registered in MSDA_IMPLS
FORM_TO_IMPL: Dict[str, str] = {"grid_sample": "pytorch", "gather": "gather", "fused": "onnx_fused"}
# impls that live in modules imported only on demand
_IMPL_MODULES: Dict[str, str] = {"gather": "edgedet.ops.msda_gather"}


class _FusedMSDA(torch.autograd.Function):
    """Reference numerics eagerly; one custom ONNX node when traced by the exporter."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,  # type: ignore[override]
                num_points_per_level=None, method="default"):
        return msda_pytorch(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                            num_points_per_level=num_points_per_level, method=method)

    @staticmethod
    def symbolic(g, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                 num_points_per_level=None, method="default"):
        attrs = {}
        if num_points_per_level is not None:
            attrs["num_points_per_level_i"] = [int(p) for p in num_points_per_level]
        if method != "default":
            attrs["method_s"] = method
        out = g.op(
            f"{FUSED_DOMAIN}::{FUSED_OP}", value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            **attrs,
        )
        # Give the exporter the output type/shape so later ops keep static shapes.
        try:
            v_sizes, loc_sizes = value.type().sizes(), sampling_locations.type().sizes()
        except RuntimeError:  # shapes unknown to the tracer: leave the output type open
            v_sizes = loc_sizes = None
        if v_sizes and loc_sizes and all(isinstance(d, int) for d in list(v_sizes) + list(loc_sizes)):
            out.setType(value.type().with_sizes([loc_sizes[0], loc_sizes[1], v_sizes[2] * v_sizes[3]]))
        return out


def _as_index_tensor(x: Optional[Shapes], like: Tensor) -> Tensor:
    return torch.as_tensor(x, dtype=torch.int64, device=like.device)


@MSDA_IMPLS.register("onnx_fused", export_only=True, methods=("default", "discrete"), per_level=True)
def msda_onnx_fused(
    value: Tensor,
    spatial_shapes: Shapes,
    level_start_index: Optional[Tensor],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    num_points_per_level: Optional[Sequence[int]] = None,
    method: str = "default",
) -> Tensor:
    """MSDA that exports as the fused custom node (shapes and rules as in `edgedet.ops.msda`)."""
    if method not in METHODS:
        raise NotImplementedError(f"MSDA impl 'onnx_fused' has no method {method!r}; it has {', '.join(METHODS)}")
    if isinstance(spatial_shapes, Tensor):
        shapes = spatial_shapes
    else:
        shapes = _as_index_tensor(spatial_shapes_as_list(spatial_shapes), value)
    if level_start_index is None:
        level_start_index = _as_index_tensor(level_start_index_from_shapes(spatial_shapes), value)
    counts = None if num_points_per_level is None else tuple(int(p) for p in num_points_per_level)
    return _FusedMSDA.apply(
        value, shapes.to(torch.int64), level_start_index.to(torch.int64), sampling_locations, attention_weights,
        counts, method,
    )


def _msda_layers():
    """Layer classes whose `impl` attribute names their MSDA implementation (DETR family, RT-DETRv2)."""
    from edgedet.nn.rtdetr_decoder import MSDeformableAttentionV2

    return (MSDeformAttn, MSDeformableAttentionV2)


def has_msda(model: nn.Module) -> bool:
    return any(isinstance(m, _msda_layers()) for m in model.modules())


def ensure_form_available(form: str) -> str:
    """Import the module of the impl behind `form` -> impl name; clear error when it is missing."""
    if form not in FORM_TO_IMPL:
        raise ExportError(f"unknown msda form '{form}'; valid: {', '.join(FORM_TO_IMPL)}")
    impl = FORM_TO_IMPL[form]
    if impl not in MSDA_IMPLS and impl in _IMPL_MODULES:
        try:
            importlib.import_module(_IMPL_MODULES[impl])
        except ImportError as e:
            raise ExportError(
                f"msda form '{form}' needs {_IMPL_MODULES[impl]} which failed to import ({e}); use msda='grid_sample'"
            ) from e
    if impl not in MSDA_IMPLS:
        raise ExportError(f"msda form '{form}' needs the MSDA impl '{impl}', which is not registered; use msda='grid_sample'")
    return impl


def form_available(form: str) -> bool:
    try:
        ensure_form_available(form)
    except ExportError:
        return False
    return True


@contextlib.contextmanager
def msda_form(model: nn.Module, form: str) -> Iterator[nn.Module]:
    """Switch every MSDeformAttn in `model` to the impl of `form`; restore each layer's impl after."""
    if not form:
        yield model
        return
    impl = ensure_form_available(form)
    previous = {m: m.impl for m in model.modules() if isinstance(m, _msda_layers())}
    set_msda_impl(model, impl)
    for layer in previous:
        layer.impl = impl
    try:
        yield model
    finally:
        for layer, name in previous.items():
            layer.impl = name


def register_fused_schema() -> None:
    """Teach `onnx.checker` the fused node's signature so graphs using it are fully checked."""
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has(FUSED_OP, FUSED_DOMAIN):
        return
    param = OpSchema.FormalParameter
    schema = OpSchema(
        FUSED_OP,
        FUSED_DOMAIN,
        FUSED_OPSET,
        doc="edgedet multi-scale deformable attention (rules in edgedet.ops.msda).",
        inputs=[
            param("value", "T"),
            param("spatial_shapes", "I"),
            param("level_start_index", "I"),
            param("sampling_locations", "T"),
            param("attention_weights", "T"),
        ],
        outputs=[param("output", "T")],
        attributes=[
            OpSchema.Attribute(
                "num_points_per_level", OpSchema.AttrType.INTS, "per-level layout: points of each level", required=False
            ),
            OpSchema.Attribute("method", OpSchema.AttrType.STRING, "'default' (bilinear) or 'discrete'", required=False),
        ],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors"), ("I", ["tensor(int64)"], "indices")],
    )
    onnx.defs.register_schema(schema)
