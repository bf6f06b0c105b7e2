"""Feature pyramid for the auxiliary heads, built from the DETR encoder's output.

The encoder memory [B, S, D] is split back into its levels ([B, D, H_l, W_l]). A multi-scale
model keeps its levels and adds one more at twice the last stride (`multiscale`: 3x3 stride-2
conv + GroupNorm(32) on the last level, as the official Co-DINO / Co-Deformable-DETR heads do);
`identity` keeps the levels only. A single-scale one (one stride-s map) gets ViTDet's
simple feature pyramid (`simple`): strides s/4, s/2 (transposed convs), s, and 2s (max-pool),
each followed by a 1x1 and a 3x3 conv with GroupNorm. `auto` picks multiscale or simple by the
number of levels.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn

from edgedet.registry import Registry

PYRAMIDS = Registry("Co-DETR feature pyramid")


def split_levels(memory: Tensor, shapes_hw: Sequence[Tuple[int, int]]) -> List[Tensor]:
    """Encoder memory [B, S, D] (levels flattened row-major, concatenated) -> per level [B, D, H_l, W_l]."""
    out, start = [], 0
    for h, w in shapes_hw:
        out.append(memory[:, start : start + h * w].transpose(1, 2).reshape(memory.shape[0], memory.shape[2], h, w))
        start += h * w
    if start != memory.shape[1]:
        raise ValueError(f"split_levels: level shapes cover {start} tokens but memory has {memory.shape[1]}")
    return out


def _norm(d: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, d), d)


@PYRAMIDS.register("identity")
class IdentityPyramid(nn.Module):
    """Multi-scale encoders: the levels are the pyramid."""

    def __init__(self, d_model: int, num_levels: int):
        super().__init__()
        self.num_levels = num_levels

    def output_strides(self, strides: Sequence[int]) -> List[int]:
        return list(strides)

    def forward(self, levels: List[Tensor]) -> List[Tensor]:
        return list(levels)


@PYRAMIDS.register("multiscale")
class MultiScaleDownsamplePyramid(nn.Module):
    """Multi-scale encoders: the levels plus one extra level downsampled from the last (official Co-DETR)."""

    def __init__(self, d_model: int, num_levels: int):
        super().__init__()
        if num_levels < 2:
            raise ValueError(f"the multiscale pyramid builds on several levels, got {num_levels}; use 'simple'")
        self.num_levels = num_levels
        self.downsample = nn.Sequential(nn.Conv2d(d_model, d_model, 3, stride=2, padding=1), _norm(d_model))

    def output_strides(self, strides: Sequence[int]) -> List[int]:
        return list(strides) + [strides[-1] * 2]

    def forward(self, levels: List[Tensor]) -> List[Tensor]:
        return list(levels) + [self.downsample(levels[-1])]


@PYRAMIDS.register("simple")
class SimpleFeaturePyramid(nn.Module):
    """One stride-s map [B, D, H, W] -> four maps at strides s/4, s/2, s, 2s (Li et al. 2022, ViTDet)."""

    def __init__(self, d_model: int, num_levels: int):
        super().__init__()
        if num_levels != 1:
            raise ValueError(f"the simple feature pyramid builds on one level, got {num_levels}; use 'identity'")
        d = d_model
        self.stages = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(d, d, 2, 2), _norm(d), nn.GELU(), nn.ConvTranspose2d(d, d, 2, 2)),
            nn.ConvTranspose2d(d, d, 2, 2),
            nn.Identity(),
            nn.MaxPool2d(2, 2, ceil_mode=True),
        ])
        self.outputs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d, d, 1), _norm(d), nn.Conv2d(d, d, 3, padding=1), _norm(d)) for _ in self.stages
        )

    def output_strides(self, strides: Sequence[int]) -> List[int]:
        s = strides[0]
        return [s // 4, s // 2, s, s * 2]

    def forward(self, levels: List[Tensor]) -> List[Tensor]:
        x = levels[0]
        return [out(stage(x)) for stage, out in zip(self.stages, self.outputs)]


def build_pyramid(kind: str, d_model: int, num_levels: int) -> nn.Module:
    """`multiscale`, `identity`, `simple`, or `auto` (multiscale for several levels, simple for one)."""
    if kind == "auto":
        kind = "multiscale" if num_levels > 1 else "simple"
    return PYRAMIDS.get(kind)(d_model, num_levels)


def image_sizes(mask: Tensor) -> Tensor:
    """Padding mask [B, H, W] (True at padding) -> [B, 2] float (h, w) of each unpadded image in pixels."""
    h = (~mask[:, :, 0]).sum(1)
    w = (~mask[:, 0, :]).sum(1)
    return torch.stack([h, w], 1).to(torch.float32)


__all__ = ["PYRAMIDS", "split_levels", "IdentityPyramid", "MultiScaleDownsamplePyramid", "SimpleFeaturePyramid", "build_pyramid", "image_sizes"]
