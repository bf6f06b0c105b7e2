"""What every Co-DETR auxiliary head shares: its config base, its registry, its positives.

A head is built as `AUX_HEADS.get(type)(cfg, d_model, num_classes, num_levels)` and called as
`head(features, strides, image_hw, targets) -> (losses, Positives)`:
features per level [B, D, H_l, W_l]; strides per level (pixels); image_hw [B, 2] (h, w) of each
unpadded image; targets per image `labels` [n] and `boxes` [n, 4] normalised cxcywh. `losses`
are unweighted; `head.loss_weights()` gives each key's weight inside the head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import Tensor

from edgedet.nn.box_ops import box_cxcywh_to_xyxy
from edgedet.registry import Registry

AUX_HEADS = Registry("Co-DETR auxiliary head")


@dataclass
class AuxHeadConfig:
    """Settings every auxiliary head has (a YAML mapping under `model.aux_heads`)."""

    type: str = ""
    # Scales all of the head's losses; None = 2 · decoder layers (the paper's λ2 · L).
    loss_weight: Optional[float] = None
    # Weight of the positive-query losses built from this head's assignment (each decoder layer).
    aux_query_weight: float = 1.0
    # At most this many positives per image become decoder queries (a random subset beyond it).
    max_pos_queries: int = 300


@dataclass
class Positives:
    """A head's positive samples per image, the material of its customised positive queries.

    boxes_xyxy      [n_i, 4] pixels: the positive anchors / proposals themselves
    labels          [n_i] int64: class of the ground truth each one is assigned to
    gt_boxes_cxcywh [n_i, 4] normalised: that ground-truth box
    negatives_xyxy  [m_i, 4] pixels: background anchors / proposals (pad a batch's query groups)
    """

    boxes_xyxy: List[Tensor]
    labels: List[Tensor]
    gt_boxes_cxcywh: List[Tensor]
    negatives_xyxy: List[Tensor]

    def counts(self) -> List[int]:
        return [int(b.shape[0]) for b in self.boxes_xyxy]


def gt_boxes_pixels(target: Dict[str, Tensor], image_hw: Tensor) -> Tensor:
    """A target's normalised cxcywh boxes [n, 4] -> xyxy pixels of its unpadded image (h, w)."""
    scale = torch.stack([image_hw[1], image_hw[0], image_hw[1], image_hw[0]]).to(image_hw)
    return box_cxcywh_to_xyxy(target["boxes"].to(image_hw)) * scale


def zero_loss(*tensors: Tensor) -> Tensor:
    """A zero that keeps every given tensor in the graph (stable keys, all parameters used)."""
    return sum(t.sum() * 0.0 for t in tensors)





def paired_giou(a_xyxy: Tensor, b_xyxy: Tensor) -> Tensor:
    """Generalised IoU of matching rows of [N, 4] and [N, 4] xyxy boxes -> [N]."""
    area_a = (a_xyxy[:, 2] - a_xyxy[:, 0]) * (a_xyxy[:, 3] - a_xyxy[:, 1])
    area_b = (b_xyxy[:, 2] - b_xyxy[:, 0]) * (b_xyxy[:, 3] - b_xyxy[:, 1])
    wh = (torch.min(a_xyxy[:, 2:], b_xyxy[:, 2:]) - torch.max(a_xyxy[:, :2], b_xyxy[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area_a + area_b - inter
    hull_wh = (torch.max(a_xyxy[:, 2:], b_xyxy[:, 2:]) - torch.min(a_xyxy[:, :2], b_xyxy[:, :2])).clamp(min=0)
    hull = hull_wh[:, 0] * hull_wh[:, 1]
    eps = 1e-7
    return inter / (union + eps) - (hull - union) / (hull + eps)


def stack_padded(per_image: List[Tensor]) -> Tensor:
    """Per-image [n_i, ...] tensors -> [B, max(n_i, 1), ...], zero-padded (for batched gathers)."""
    longest = max([1] + [int(x.shape[0]) for x in per_image])
    out = per_image[0].new_zeros((len(per_image), longest) + tuple(per_image[0].shape[1:]))
    for i, x in enumerate(per_image):
        out[i, : x.shape[0]] = x
    return out


__all__ = ["AUX_HEADS", "AuxHeadConfig", "Positives", "gt_boxes_pixels", "zero_loss", "paired_giou", "stack_padded"]
