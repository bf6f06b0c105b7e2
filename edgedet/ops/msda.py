"""Multi-scale deformable attention (MSDA), one op with implementations chosen by name.

Shapes (N batch, S = sum(H_l * W_l) value tokens, M heads, D channels per head,
Lq queries, L levels, P points per level):
    value               [N, S, M, D]
    spatial_shapes      [L, 2]  (H, W) per level, int64 tensor or list of pairs
    level_start_index   [L]     offset of each level in S (optional; derived when absent)
    sampling_locations  [N, Lq, M, L, P, 2]  (x, y) in [0, 1]; (0, 0) is the top-left corner
    attention_weights   [N, Lq, M, L, P]
    returns             [N, Lq, M * D]  (head-major channels)

Sampling is bilinear with zero padding outside the map, i.e. grid_sample with
align_corners=False at grid = 2 * location - 1. The `pytorch` implementation below is the
specification; every other implementation (gather form for export, C++/CUDA kernels)
registers itself in `MSDA_IMPLS` and is tested against it.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from edgedet.registry import MSDA_IMPLS

Shapes = Union[Tensor, Sequence[Tuple[int, int]]]


def spatial_shapes_as_list(spatial_shapes: Shapes) -> List[Tuple[int, int]]:
    """[L, 2] tensor or sequence -> list of python (H, W) pairs (constants when exporting)."""
    if isinstance(spatial_shapes, Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(int(h), int(w)) for h, w in spatial_shapes]


def level_start_index_from_shapes(spatial_shapes: Shapes) -> List[int]:
    starts, total = [], 0
    for h, w in spatial_shapes_as_list(spatial_shapes):
        starts.append(total)
        total += h * w
    return starts


def check_msda_inputs(value: Tensor, spatial_shapes: Shapes, sampling_locations: Tensor, attention_weights: Tensor) -> None:
    """Raise a ValueError naming the offending argument when shapes disagree."""
    if value.dim() != 4:
        raise ValueError(f"value must be [N, S, M, D], got {tuple(value.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(f"sampling_locations must be [N, Lq, M, L, P, 2], got {tuple(sampling_locations.shape)}")
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"attention_weights {tuple(attention_weights.shape)} must equal sampling_locations[:-1] "
            f"{tuple(sampling_locations.shape[:-1])}"
        )
    shapes = spatial_shapes_as_list(spatial_shapes)
    n, s, m, _ = value.shape
    if sum(h * w for h, w in shapes) != s:
        raise ValueError(f"spatial_shapes {shapes} cover {sum(h * w for h, w in shapes)} tokens but value has S={s}")
    if sampling_locations.shape[0] != n or sampling_locations.shape[2] != m or sampling_locations.shape[3] != len(shapes):
        raise ValueError(
            f"sampling_locations {tuple(sampling_locations.shape)} disagree with value (N={n}, M={m}) "
            f"or with {len(shapes)} levels"
        )


@MSDA_IMPLS.register("pytorch")
def msda_pytorch(
    value: Tensor,
    spatial_shapes: Shapes,
    level_start_index: Optional[Tensor],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Reference implementation: one grid_sample per level."""
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = spatial_shapes_as_list(spatial_shapes)
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # [N, HW, M, D] -> [N*M, D, H, W]
        v = per_level[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # [N, Lq, M, P, 2] -> [N*M, Lq, P, 2]
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [N*M, D, Lq, L*P] weighted by [N*M, 1, Lq, L*P]
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * num_points)
    out = (stacked * weights).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2).contiguous()


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Shapes,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    impl: str = "pytorch",
    level_start_index: Optional[Tensor] = None,
) -> Tensor:
    """Dispatch to the implementation registered as `impl` (see module docstring for shapes)."""
    check_msda_inputs(value, spatial_shapes, sampling_locations, attention_weights)
    fn = MSDA_IMPLS.get(impl)
    return fn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
