"""RoIAlign (He et al. 2017) written with `torch.nn.functional.grid_sample`.

Follows the "aligned" convention (torchvision `aligned=True`): a box edge at pixel coordinate x
maps to feature index x · spatial_scale − 0.5, so feature cell i covers [i, i + 1) and its
centre is index i. Each output bin averages `sampling_ratio`² bilinear samples at the centres
of a regular sub-grid; samples further than one cell outside the map count as zero, samples
within one cell of the border read the border value (torchvision's clamping).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

# FPN's level rule: boxes smaller than 2 · FINEST_SCALE px go to the first level (Lin et al. 2017).
FINEST_SCALE = 56.0


def _sample_coords(start: Tensor, size: Tensor, bins: int, ratio: int) -> Tensor:
    """[R] box starts and sizes (feature index units) -> [R, bins · ratio] sample coordinates."""
    steps = (torch.arange(bins * ratio, dtype=start.dtype, device=start.device) + 0.5) / ratio  # in bins
    return start[:, None] + steps[None] * (size / bins)[:, None]


def roi_align(features: Tensor, rois: Tensor, output_size: Union[int, Tuple[int, int]], spatial_scale: float,
              sampling_ratio: int = 2) -> Tensor:
    """features [B, C, H, W]; rois [R, 5] = (batch index, x0, y0, x1, y1) in pixels -> [R, C, oh, ow]."""
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"roi_align expects rois [R, 5] (batch index, x0, y0, x1, y1), got {tuple(rois.shape)}")
    if sampling_ratio < 1:
        raise ValueError(f"roi_align needs sampling_ratio >= 1, got {sampling_ratio}")
    _, c, h, w = features.shape
    if rois.shape[0] == 0:
        return features.new_zeros(0, c, oh, ow)
    boxes = rois[:, 1:].float() * spatial_scale - 0.5  # coordinates in float32 even under autocast
    xs = _sample_coords(boxes[:, 0], boxes[:, 2] - boxes[:, 0], ow, sampling_ratio)  # [R, ow·r]
    ys = _sample_coords(boxes[:, 1], boxes[:, 3] - boxes[:, 1], oh, sampling_ratio)  # [R, oh·r]
    valid = ((ys >= -1) & (ys <= h))[:, :, None] & ((xs >= -1) & (xs <= w))[:, None, :]
    # Index coordinate i -> grid_sample's normalised coordinate (align_corners=False).
    gx = (xs + 0.5) / w * 2 - 1
    gy = (ys + 0.5) / h * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), -1).to(features.dtype)
    batch_idx = rois[:, 0].long()
    parts = []
    for b in torch.unique(batch_idx).tolist():
        sel = torch.nonzero(batch_idx == b).flatten()
        g = grid[sel].reshape(1, -1, grid.shape[2], 2)  # every RoI of the image stacked along height
        sampled = F.grid_sample(features[b : b + 1], g, mode="bilinear", padding_mode="border", align_corners=False)
        sampled = sampled.view(c, len(sel), oh * sampling_ratio, ow * sampling_ratio).transpose(0, 1)
        sampled = sampled * valid[sel][:, None].to(sampled.dtype)
        parts.append((sel, sampled.view(len(sel), c, oh, sampling_ratio, ow, sampling_ratio).mean((3, 5))))
    return _assemble(parts, rois.shape[0])


def _assemble(parts: List[Tuple[Tensor, Tensor]], n: int) -> Tensor:
    """(row indices, rows) pieces that cover 0..n-1 -> one [n, ...] tensor in row order."""
    idx = torch.cat([p[0] for p in parts])
    rows = torch.cat([p[1] for p in parts])
    return rows[torch.empty_like(idx).scatter_(0, idx, torch.arange(n, device=idx.device))]


def roi_levels(boxes_xyxy: Tensor, num_levels: int, finest_scale: float = FINEST_SCALE) -> Tensor:
    """Pyramid level of each [R, 4] box by its size: floor(log2(sqrt(w·h) / finest_scale)), clamped."""
    scale = ((boxes_xyxy[:, 2] - boxes_xyxy[:, 0]).clamp(min=0) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1]).clamp(min=0)).sqrt()
    return torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(0, num_levels - 1).long()


def multilevel_roi_align(features: Sequence[Tensor], strides: Sequence[float], rois: Tensor,
                         output_size: Union[int, Tuple[int, int]], sampling_ratio: int = 2,
                         finest_scale: float = FINEST_SCALE) -> Tensor:
    """RoIAlign each RoI [R, 5] on the pyramid level its size selects -> [R, C, oh, ow]."""
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    if rois.shape[0] == 0:
        return features[0].new_zeros(0, features[0].shape[1], oh, ow)
    levels = roi_levels(rois[:, 1:], len(features), finest_scale)
    parts = []
    for lvl, (feat, stride) in enumerate(zip(features, strides)):
        sel = torch.nonzero(levels == lvl).flatten()
        if sel.numel():
            parts.append((sel, roi_align(feat, rois[sel], (oh, ow), 1.0 / stride, sampling_ratio)))
    return _assemble(parts, rois.shape[0])


def boxes_to_rois(boxes_per_image: List[Tensor]) -> Tensor:
    """Per-image [n_i, 4] xyxy boxes -> [sum n_i, 5] rois with the batch index in front."""
    rois = [torch.cat([b.new_full((b.shape[0], 1), float(i)), b], 1) for i, b in enumerate(boxes_per_image)]
    return torch.cat(rois, 0) if rois else torch.zeros(0, 5)


__all__ = ["roi_align", "roi_levels", "multilevel_roi_align", "boxes_to_rois", "FINEST_SCALE"]
