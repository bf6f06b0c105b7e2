"""Multi-scale deformable attention as a layer (Zhu et al., Deformable DETR).

Parameter names (`sampling_offsets`, `attention_weights`, `value_proj`, `output_proj`) match
the reference checkpoints. The core op is chosen by `impl` (see `edgedet.ops.msda`), so
exporters and kernels swap it without touching the layer.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from edgedet.ops.msda import Shapes, multi_scale_deformable_attention


class MSDeformAttn(nn.Module):
    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4, impl: str = "auto"):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.impl = impl
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        # Initial offsets point in n_heads evenly spread directions, k-th point k units out.
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value_tokens: Tensor,
        spatial_shapes: Shapes,
        level_start_index: Optional[Tensor] = None,
        padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        query            [N, Lq, C]
        reference_points [N, Lq, L, 2] (x, y) or [N, Lq, L, 4] (cx, cy, w, h), normalised
        value_tokens     [N, S, C] flattened multi-scale features
        spatial_shapes   [L, 2] (H, W)
        padding_mask     [N, S] True at padding (those values are zeroed)
        returns          [N, Lq, C]
        """
        n, lq, _ = query.shape
        s = value_tokens.shape[1]
        value = self.value_proj(value_tokens)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, s, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(n, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, lq, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(n, lq, self.n_heads, self.n_levels, self.n_points)
        if reference_points.shape[-1] == 2:
            if isinstance(spatial_shapes, Tensor):
                shapes = spatial_shapes.to(query.dtype)
            else:
                shapes = torch.tensor(spatial_shapes, dtype=query.dtype, device=query.device)
            normalizer = torch.stack([shapes[..., 1], shapes[..., 0]], -1)  # (W, H)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(f"reference_points must end in 2 or 4 values, got {tuple(reference_points.shape)}")
        out = multi_scale_deformable_attention(
            value, spatial_shapes, locations, weights, impl=self.impl, level_start_index=level_start_index
        )
        return self.output_proj(out)


def set_msda_impl(model: nn.Module, impl: str) -> nn.Module:
    """Switch every MSDeformAttn layer in `model` to implementation `impl` (in place)."""
    from edgedet.registry import MSDA_IMPLS

    MSDA_IMPLS.get(impl)  # fail early on an unknown name
    for m in model.modules():
        if isinstance(m, MSDeformAttn):
            m.impl = impl
    return model
