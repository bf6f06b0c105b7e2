"""The padding mask of a letterboxed batch, built from each image's valid region.

Training batches carry `mask [B, H, W]` (True at padding) from the collate function; a deployed graph
cannot see how an image was padded, so it takes the valid region `valid_hw [B, 2]` (h, w) and rebuilds
the same mask here: images are always placed at the top-left and padded bottom/right.
"""
from __future__ import annotations

import torch
from torch import Tensor


def padding_mask(valid_hw: Tensor, height: int, width: int) -> Tensor:
    """valid_hw [B, 2] (h, w) -> mask [B, height, width] bool, True outside the top-left h x w region."""
    valid_hw = valid_hw.to(torch.int64)
    rows = torch.arange(height, device=valid_hw.device)[None, :, None] >= valid_hw[:, 0, None, None]
    cols = torch.arange(width, device=valid_hw.device)[None, None, :] >= valid_hw[:, 1, None, None]
    return rows | cols


def as_trained(images: Tensor, valid_hw: Tensor):
    """Letterboxed images and their valid regions [B, 2] -> (images, mask) exactly as a training batch has them:
    the padding set to 0 (the collate's padding; the letterbox colour only normalises to ~0), the mask rebuilt."""
    mask = padding_mask(valid_hw, images.shape[-2], images.shape[-1])
    return images.masked_fill(mask[:, None], 0.0), mask


def forward_letterboxed(model: torch.nn.Module, images: Tensor, valid_hw: Tensor):
    """The model on letterboxed images whose valid regions are `valid_hw` [B, 2], exactly as in training.
    Boxes come out normalised to each valid region."""
    return model(*as_trained(images, valid_hw))


def uses_padding_mask(model: torch.nn.Module) -> bool:
    """Detector families trained with a padding mask: all but the mask-free real-time ones (`pads_as_content`).
    A module outside the detector contract (no `DetectorBase`) is fed the image alone."""
    from edgedet.models.base import DetectorBase

    return isinstance(model, DetectorBase) and not model.pads_as_content


__all__ = ["padding_mask", "as_trained", "forward_letterboxed", "uses_padding_mask"]
