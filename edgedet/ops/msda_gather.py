"""`gather` MSDA implementation: sampling by index arithmetic and one flat gather.

Same semantics as the `pytorch` specification in `edgedet.ops.msda` (both point layouts, both
methods), but written without GridSample so that ONNX export yields Gather + elementwise arithmetic +
MatMul. TensorRT miscompiles the GridSample form, and on CPUs this form is sometimes the faster one.

Layout trick: value [N, S, M, D] is permuted to rows [N * M * S, D], so every bilinear corner (or
nearest pixel) of every sample of every level is one row index; all K = sum(P_l) samples are
gathered at once and reduced with a batched matmul against their combined weights. Per-level
constants (width, height, start) are laid out per sampling point, so the uniform layout is just the
per-level one with P points on every level.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch
from torch import Tensor

from edgedet.ops.msda import Shapes, level_start_index_from_shapes, spatial_shapes_as_list
from edgedet.registry import MSDA_IMPLS


def _point_geometry(shapes, counts: Sequence[int], dtype: torch.dtype, device: torch.device):
    """Per-point constants [K] of the level each point samples: widths, heights (float and int), starts."""
    per_point = lambda xs: [x for x, c in zip(xs, counts) for _ in range(c)]  # noqa: E731
    with warnings.catch_warnings():
        # Level shapes are Python constants by design (static in export); the tracer's note
        # that these tensors become graph constants is therefore expected.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        widths = per_point([w for _, w in shapes])
        heights = per_point([h for h, _ in shapes])
        starts = per_point(level_start_index_from_shapes(shapes))
        return (
            torch.tensor(widths, dtype=dtype, device=device),
            torch.tensor(heights, dtype=dtype, device=device),
            torch.tensor(widths, dtype=torch.int64, device=device),
            torch.tensor(heights, dtype=torch.int64, device=device),
            torch.tensor(starts, dtype=torch.int64, device=device),
        )


def _bilinear_corners(x: Tensor, y: Tensor, widths_i: Tensor, heights_i: Tensor, dtype: torch.dtype):
    """Pixel coordinates [.., K] -> corner columns, rows [.., K, 4] and bilinear weights (0 outside)."""
    x0f = torch.floor(x)
    y0f = torch.floor(y)
    fx = x - x0f  # differentiable fractional parts carry the bilinear derivative
    fy = y - y0f
    x0 = x0f.to(torch.int64)
    y0 = y0f.to(torch.int64)
    # Corners in order (x0,y0), (x1,y0), (x0,y1), (x1,y1), stacked on a new last axis.
    cx = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=-1)
    cy = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=-1)
    wx = torch.stack([1 - fx, fx, 1 - fx, fx], dim=-1)
    wy = torch.stack([1 - fy, 1 - fy, fy, fy], dim=-1)
    w_i = widths_i.unsqueeze(-1)
    h_i = heights_i.unsqueeze(-1)
    # Each coordinate is checked against its own extent (rectangular maps).
    valid = (cx >= 0) & (cx < w_i) & (cy >= 0) & (cy < h_i)
    # Invalid corners point at a safe pixel and contribute zero through their weight.
    cx = torch.minimum(torch.clamp(cx, min=0), w_i - 1)
    cy = torch.minimum(torch.clamp(cy, min=0), h_i - 1)
    return cx, cy, wx * wy * valid.to(dtype)


@MSDA_IMPLS.register("gather", exportable=True, onnx_ops=("Gather", "MatMul"), methods=("default", "discrete"), per_level=True)
def msda_gather(
    value: Tensor,
    spatial_shapes: Shapes,
    level_start_index: Optional[Tensor],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    num_points_per_level: Optional[Sequence[int]] = None,
    method: str = "default",
) -> Tensor:
    """MSDA via gathered rows (layouts and rules as in `edgedet.ops.msda`) -> [N, Lq, M * D].

    `level_start_index` is ignored: the offsets follow from `spatial_shapes`, which are read as
    Python constants (static in export).
    """
    if method not in ("default", "discrete"):
        raise NotImplementedError(f"MSDA impl 'gather' has no method {method!r}; it has 'default' and 'discrete'")
    n, s, m, d = value.shape
    lq = sampling_locations.shape[1]
    shapes = spatial_shapes_as_list(spatial_shapes)
    if num_points_per_level is None:  # uniform layout: P points on every level, same memory order
        counts = [sampling_locations.shape[4]] * len(shapes)
        sampling_locations = sampling_locations.flatten(3, 4)
        attention_weights = attention_weights.flatten(3, 4)
    else:
        counts = [int(p) for p in num_points_per_level]
    widths, heights, widths_i, heights_i, starts = _point_geometry(shapes, counts, value.dtype, value.device)

    if method == "default":
        # Pixel coordinates with pixel centres at integers (align_corners=False).
        x = sampling_locations[..., 0] * widths - 0.5  # [N, Lq, M, K]
        y = sampling_locations[..., 1] * heights - 0.5
        cx, cy, corner_w = _bilinear_corners(x, y, widths_i, heights_i, value.dtype)
        weights = corner_w * attention_weights.unsqueeze(-1)  # [N, Lq, M, K, 4]
        token = starts.unsqueeze(-1) + cy * widths_i.unsqueeze(-1) + cx
    else:
        # RT-DETRv2's nearest pixel: truncate loc * size + 0.5, clamp x and y by H (upstream), x by W.
        ix = (sampling_locations[..., 0] * widths + 0.5).to(torch.int64)
        iy = (sampling_locations[..., 1] * heights + 0.5).to(torch.int64)
        ix = torch.minimum(torch.minimum(torch.clamp(ix, min=0), heights_i - 1), widths_i - 1)
        iy = torch.minimum(torch.clamp(iy, min=0), heights_i - 1)
        weights = attention_weights.unsqueeze(-1)  # [N, Lq, M, K, 1]
        token = (starts + iy * widths_i + ix).unsqueeze(-1)
    per_sample = weights.shape[-1]

    # Row of each sample in value laid out as [N, M, S, D].
    head_base = torch.arange(n * m, device=value.device, dtype=torch.int64).view(n, 1, m, 1, 1) * s
    rows = (token + head_base).reshape(-1)
    table = value.permute(0, 2, 1, 3).reshape(n * m * s, d)
    k = sum(counts) * per_sample
    gathered = table.index_select(0, rows).view(n, lq, m, k, d)
    out = torch.matmul(weights.reshape(n, lq, m, 1, k), gathered)  # [N, Lq, M, 1, D]
    return out.reshape(n, lq, m * d)
