"""`gather` MSDA implementation: bilinear sampling by index arithmetic and one flat gather.

Same semantics as the `pytorch` (grid_sample) specification in `edgedet.ops.msda`, but written
without GridSample so that ONNX export yields Gather + elementwise arithmetic + MatMul. TensorRT
miscompiles the GridSample form, and on CPUs this form is sometimes the faster one.

Layout trick: value [N, S, M, D] is permuted to rows [N * M * S, D], so every bilinear corner of
every sample of every level is one row index; the four corners of all L * P samples are gathered at
once and reduced with a batched matmul against their combined weights.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from edgedet.ops.msda import Shapes, level_start_index_from_shapes, spatial_shapes_as_list
from edgedet.registry import MSDA_IMPLS


def _level_geometry(shapes, dtype: torch.dtype, device: torch.device):
    """Per-level constants broadcastable to [.., L, P]: widths, heights (float and int), starts."""
    with warnings.catch_warnings():
        # Level shapes are Python constants by design (static in export); the tracer's note
        # that these tensors become graph constants is therefore expected.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        widths = torch.tensor([w for _, w in shapes], dtype=dtype, device=device).view(-1, 1)
        heights = torch.tensor([h for h, _ in shapes], dtype=dtype, device=device).view(-1, 1)
        widths_i = torch.tensor([w for _, w in shapes], dtype=torch.int64, device=device).view(-1, 1)
        heights_i = torch.tensor([h for h, _ in shapes], dtype=torch.int64, device=device).view(-1, 1)
        starts = torch.tensor(level_start_index_from_shapes(shapes), dtype=torch.int64, device=device).view(-1, 1)
    return widths, heights, widths_i, heights_i, starts


@MSDA_IMPLS.register("gather", exportable=True, onnx_ops=("Gather", "MatMul"))
def msda_gather(
    value: Tensor,
    spatial_shapes: Shapes,
    level_start_index: Optional[Tensor],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    num_points_per_level=None,
    method: str = "default",
) -> Tensor:
    """Bilinear, zero-padded sampling (grid_sample align_corners=False) via gathered corner rows.

    value [N, S, M, D], sampling_locations [N, Lq, M, L, P, 2] (x, y) in [0, 1],
    attention_weights [N, Lq, M, L, P] -> [N, Lq, M * D]. `level_start_index` is ignored: the
    offsets follow from `spatial_shapes`, which are read as Python constants (static in export).
    """
    if num_points_per_level is not None or method != "default":
        raise NotImplementedError("MSDA impl 'gather' lacks per-level point counts and method='discrete' (yet)")
    n, s, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = spatial_shapes_as_list(spatial_shapes)
    widths, heights, widths_i, heights_i, starts = _level_geometry(shapes, value.dtype, value.device)

    # Pixel coordinates with pixel centres at integers (align_corners=False).
    x = sampling_locations[..., 0] * widths - 0.5  # [N, Lq, M, L, P]
    y = sampling_locations[..., 1] * heights - 0.5
    x0f = torch.floor(x)
    y0f = torch.floor(y)
    fx = x - x0f  # differentiable fractional parts carry the bilinear derivative
    fy = y - y0f
    x0 = x0f.to(torch.int64)
    y0 = y0f.to(torch.int64)

    # Corners in order (x0,y0), (x1,y0), (x0,y1), (x1,y1), stacked on a new last axis.
    cx = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=-1)  # [N, Lq, M, L, P, 4]
    cy = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=-1)
    wx = torch.stack([1 - fx, fx, 1 - fx, fx], dim=-1)
    wy = torch.stack([1 - fy, 1 - fy, fy, fy], dim=-1)
    w_i = widths_i.unsqueeze(-1)  # [L, 1, 1]
    h_i = heights_i.unsqueeze(-1)
    # Each coordinate is checked against its own extent (rectangular maps).
    valid = (cx >= 0) & (cx < w_i) & (cy >= 0) & (cy < h_i)
    weights = wx * wy * valid.to(value.dtype) * attention_weights.unsqueeze(-1)

    # Row of each corner in value laid out as [N, M, S, D]; invalid corners point at a safe row
    # and contribute zero through their weight.
    cx = torch.minimum(torch.clamp(cx, min=0), w_i - 1)
    cy = torch.minimum(torch.clamp(cy, min=0), h_i - 1)
    token = starts.unsqueeze(-1) + cy * w_i + cx  # [N, Lq, M, L, P, 4], in [0, S)
    head_base = torch.arange(n * m, device=value.device, dtype=torch.int64).view(n, 1, m, 1, 1, 1) * s
    rows = (token + head_base).reshape(-1)

    table = value.permute(0, 2, 1, 3).reshape(n * m * s, d)
    k = num_levels * num_points * 4
    corners = table.index_select(0, rows).view(n, lq, m, k, d)
    out = torch.matmul(weights.reshape(n, lq, m, 1, k), corners)  # [N, Lq, M, 1, D]
    return out.reshape(n, lq, m * d)
