"""Anchor boxes over a feature pyramid (pixels of the padded batch image, xyxy).

Anchor centres sit at the centre of each feature cell, ((x + 0.5)·stride, (y + 0.5)·stride);
a cell holds `len(scales) · len(ratios)` anchors (location-major, anchors of one cell
contiguous), of side `scale · stride` and aspect ratio h / w = `ratio` at constant area.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor


def cell_anchors(stride: float, scales: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """Anchors of one cell centred on (0, 0): [len(ratios) · len(scales), 4] xyxy (ratio-major)."""
    out = []
    for r in ratios:
        for s in scales:
            size = s * stride
            w, h = size / r**0.5, size * r**0.5
            out.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(out, dtype=torch.float32)


def grid_anchors(
    shapes_hw: Sequence[Tuple[int, int]], strides: Sequence[float], scales: Sequence[float], ratios: Sequence[float],
    device: torch.device = torch.device("cpu"),
) -> List[Tensor]:
    """Anchors of every level: list of [H_l · W_l · A, 4] xyxy pixels, A = len(scales) · len(ratios)."""
    if len(shapes_hw) != len(strides):
        raise ValueError(f"grid_anchors got {len(shapes_hw)} level shapes but {len(strides)} strides")
    levels = []
    for (h, w), stride in zip(shapes_hw, strides):
        base = cell_anchors(stride, scales, ratios).to(device)
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) * stride
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx, cy, cx, cy], -1).reshape(-1, 1, 4)
        levels.append((centres + base[None]).reshape(-1, 4))
    return levels


def anchor_centres(anchors_xyxy: Tensor) -> Tensor:
    """[A, 4] xyxy -> [A, 2] (x, y) centres."""
    return (anchors_xyxy[:, :2] + anchors_xyxy[:, 2:]) / 2


def inside_image(anchors_xyxy: Tensor, image_hw: Tensor) -> Tensor:
    """[A] bool: the anchor's centre lies inside the unpadded image (h, w); others are ignored."""
    c = anchor_centres(anchors_xyxy)
    return (c[:, 0] < image_hw[1]) & (c[:, 1] < image_hw[0])


__all__ = ["cell_anchors", "grid_anchors", "anchor_centres", "inside_image"]
