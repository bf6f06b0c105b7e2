"""Multi-scale deformable attention (MSDA), one op with implementations chosen by name.

Shapes (N batch, S = sum(H_l * W_l) value tokens, M heads, D channels per head,
Lq queries, L levels):
    value               [N, S, M, D]
    spatial_shapes      [L, 2]  (H, W) per level, int64 tensor or list of pairs
    level_start_index   [L]     offset of each level in S (optional; derived when absent)
    returns             [N, Lq, M * D]  (head-major channels)

Two layouts of the sampling points:
    uniform (num_points_per_level=None, Deformable DETR / DINO), P points on every level:
        sampling_locations  [N, Lq, M, L, P, 2]  (x, y) in [0, 1]; (0, 0) is the top-left corner
        attention_weights   [N, Lq, M, L, P]
    per level (num_points_per_level=(P_0, ..., P_{L-1}), RT-DETRv2 / D-FINE), K = sum(P_l):
        sampling_locations  [N, Lq, M, K, 2]  level 0's P_0 points first, then level 1's, ...
        attention_weights   [N, Lq, M, K]     (the caller does the softmax over all K points)

Two sampling methods:
    "default"   bilinear with zero padding outside the map, i.e. grid_sample with
                align_corners=False at grid = 2 * location - 1.
    "discrete"  RT-DETRv2's nearest pixel (lyuwenyu/RT-DETR `deformable_attention_core_func_v2`):
                in the value's dtype, ix = int64(x * W + 0.5), iy = int64(y * H + 0.5) (truncation
                toward zero), then BOTH clamped to [0, H - 1] (the level's height, also for x: the
                upstream rule, so on a wide map x never reaches columns >= H), and the value at
                (iy, ix) is read without interpolation. On a tall map (W < H) upstream indexes past
                the last column and fails; here x is then also clamped to [0, W - 1]. No gradient
                flows to the locations. A NaN location reads pixel 0; where loc * size overflows
                int64 (inf, |loc| > 1e18) PyTorch's cast is platform-defined, and the kernels
                saturate at the border.

The `pytorch` implementation below is the specification; every other implementation (gather form
for export, C++/CUDA kernels) registers itself in `MSDA_IMPLS`, receives `num_points_per_level` and
`method` as keyword arguments, is tested against it, and raises NotImplementedError naming itself
and what it lacks for a combination it cannot compute.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from edgedet.registry import MSDA_IMPLS

Shapes = Union[Tensor, Sequence[Tuple[int, int]]]
PointsPerLevel = Optional[Sequence[int]]
METHODS = ("default", "discrete")


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


def points_per_level_as_tuple(num_points_per_level: PointsPerLevel) -> Optional[Tuple[int, ...]]:
    """None, or a tuple of python ints (accepts lists, tuples and 1-d integer tensors)."""
    if num_points_per_level is None:
        return None
    if isinstance(num_points_per_level, Tensor):
        num_points_per_level = num_points_per_level.tolist()
    if isinstance(num_points_per_level, (int, float, str)):
        raise ValueError(
            f"num_points_per_level must be a sequence with one point count per level, got {num_points_per_level!r}"
        )
    counts = tuple(num_points_per_level)
    if not counts or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in counts):
        raise ValueError(f"num_points_per_level must be positive integers, one per level, got {list(counts)}")
    return counts


def check_msda_inputs(
    value: Tensor,
    spatial_shapes: Shapes,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    num_points_per_level: PointsPerLevel = None,
    method: str = "default",
) -> None:
    """Raise a ValueError naming the offending argument when shapes or options disagree."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if value.dim() != 4:
        raise ValueError(f"value must be [N, S, M, D], got {tuple(value.shape)}")
    counts = points_per_level_as_tuple(num_points_per_level)
    if counts is None:
        if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
            hint = " (per-level layout [N, Lq, M, K, 2] needs num_points_per_level)" if sampling_locations.dim() == 5 else ""
            raise ValueError(f"sampling_locations must be [N, Lq, M, L, P, 2], got {tuple(sampling_locations.shape)}{hint}")
    elif sampling_locations.dim() != 5 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            f"sampling_locations must be [N, Lq, M, sum(num_points_per_level), 2] with num_points_per_level, "
            f"got {tuple(sampling_locations.shape)}"
        )
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"attention_weights {tuple(attention_weights.shape)} must equal sampling_locations[:-1] "
            f"{tuple(sampling_locations.shape[:-1])}"
        )
    shapes = spatial_shapes_as_list(spatial_shapes)
    if any(h < 1 or w < 1 for h, w in shapes):
        raise ValueError(f"spatial_shapes must be positive (H, W) pairs, got {shapes}")
    n, s, m, _ = value.shape
    if sum(h * w for h, w in shapes) != s:
        raise ValueError(f"spatial_shapes {shapes} cover {sum(h * w for h, w in shapes)} tokens but value has S={s}")
    if sampling_locations.shape[0] != n or sampling_locations.shape[2] != m:
        raise ValueError(f"sampling_locations {tuple(sampling_locations.shape)} disagree with value (N={n}, M={m})")
    if counts is None and sampling_locations.shape[3] != len(shapes):
        raise ValueError(
            f"sampling_locations {tuple(sampling_locations.shape)} disagree with {len(shapes)} levels in spatial_shapes"
        )
    if counts is not None:
        if len(counts) != len(shapes):
            raise ValueError(f"num_points_per_level {list(counts)} has {len(counts)} entries for {len(shapes)} levels")
        if sum(counts) != sampling_locations.shape[3]:
            raise ValueError(
                f"sampling_locations {tuple(sampling_locations.shape)} hold {sampling_locations.shape[3]} points per "
                f"head but num_points_per_level {list(counts)} sums to {sum(counts)}"
            )


def sample_discrete(value_l: Tensor, grid_l: Tensor, h: int, w: int) -> Tensor:
    """RT-DETRv2's nearest-pixel read (rule in the module docstring).

    value_l [B, D, H, W], grid_l [B, Lq, P, 2] locations in [0, 1] -> [B, D, Lq, P].
    """
    b, d = value_l.shape[:2]
    lq, p = grid_l.shape[1:3]
    with warnings.catch_warnings():  # (W, H) are Python constants by design (static in export)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        scale = torch.tensor([w, h], dtype=grid_l.dtype, device=grid_l.device)
    coord = (grid_l * scale + 0.5).to(torch.int64).clamp(0, h - 1)
    x = coord[..., 0].clamp(max=w - 1) if w < h else coord[..., 0]
    index = (coord[..., 1] * w + x).reshape(b, lq * p, 1).expand(b, lq * p, d)
    # Rows gathered as [B, Lq*P, D] then permuted, the memory layout upstream's indexing produces,
    # so the weighted sum below adds in the same order and matches upstream bit for bit.
    rows = value_l.reshape(b, d, h * w).transpose(1, 2).gather(1, index)
    return rows.permute(0, 2, 1).reshape(b, d, lq, p)


def msda_per_level(
    value: Tensor, shapes: List[Tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor,
    num_points: Sequence[int], method: str,
) -> Tensor:
    """Per-level layout, written as the official RT-DETRv2 core decomposes it (split per level,
    one grid_sample or nearest read per level, concat, weighted sum) so its ONNX export is that graph."""
    n, _, m, d = value.shape
    lq = sampling_locations.shape[1]
    value_list = value.permute(0, 2, 3, 1).flatten(0, 1).split([h * w for h, w in shapes], dim=-1)
    grids = 2 * sampling_locations - 1 if method == "default" else sampling_locations
    grid_list = grids.permute(0, 2, 1, 3, 4).flatten(0, 1).split(list(num_points), dim=-2)
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        v = value_list[lvl].reshape(n * m, d, h, w)
        if method == "default":
            sampled.append(F.grid_sample(v, grid_list[lvl], mode="bilinear", padding_mode="zeros", align_corners=False))
        else:
            sampled.append(sample_discrete(v, grid_list[lvl], h, w))
    weights = attention_weights.permute(0, 2, 1, 3).reshape(n * m, 1, lq, sum(num_points))
    out = (torch.cat(sampled, dim=-1) * weights).sum(-1).reshape(n, m * d, lq)
    return out.permute(0, 2, 1).contiguous()


@MSDA_IMPLS.register("pytorch", methods=METHODS, per_level=True)
def msda_pytorch(
    value: Tensor,
    spatial_shapes: Shapes,
    level_start_index: Optional[Tensor],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    num_points_per_level: PointsPerLevel = None,
    method: str = "default",
) -> Tensor:
    """Reference implementation: one grid_sample (or nearest read) per level."""
    shapes = spatial_shapes_as_list(spatial_shapes)
    counts = points_per_level_as_tuple(num_points_per_level)
    if counts is not None or method != "default":
        if counts is None:  # uniform layout is per-level layout with P points on every level
            num_levels, num_points = sampling_locations.shape[3:5]
            counts = (num_points,) * num_levels
            sampling_locations, attention_weights = sampling_locations.flatten(3, 4), attention_weights.flatten(3, 4)
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        return msda_per_level(value, shapes, sampling_locations, attention_weights, counts, method)
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
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
    num_points_per_level: PointsPerLevel = None,
    method: str = "default",
) -> Tensor:
    """Dispatch to the implementation registered as `impl` (see module docstring for shapes and rules)."""
    check_msda_inputs(value, spatial_shapes, sampling_locations, attention_weights, num_points_per_level, method)
    fn = MSDA_IMPLS.get(impl)
    return fn(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
        num_points_per_level=points_per_level_as_tuple(num_points_per_level), method=method,
    )
