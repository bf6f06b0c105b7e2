"""Customised positive queries (Co-DETR, section 3.2): auxiliary positives become decoder queries.

Each auxiliary head's positive anchors / proposals form one extra query *group* per image batch:
- reference box: the anchor / proposal clipped to the image, normalised cxcywh (the decoder
  takes its inverse sigmoid, as DINO's anchors);
- content: RoIAlign on the pyramid level the box size selects, a linear layer + LayerNorm, plus a
  projection of the box's sine embedding (for decoders that take an explicit query position,
  the projection's other half is that position);
- supervision: the ground truth the head assigned to each positive (no bipartite matching).
Groups are padded to the batch's largest count with background boxes (the head's negatives),
trained towards "no object". In the decoder the groups run beside the main queries, kept apart
by `group_attention_mask`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from edgedet.nn.box_ops import box_xyxy_to_cxcywh, inverse_sigmoid
from edgedet.nn.co_heads.common import Positives
from edgedet.nn.co_heads.roi_align import boxes_to_rois, multilevel_roi_align
from edgedet.nn.deformable_transformer import proposal_pos_embed

# Reference boxes are clamped away from 0 and 1 before the inverse sigmoid.
REF_EPS = 1e-3


@dataclass
class QueryGroup:
    """One head's positive queries for a batch (G slots per image).

    content             [B, G, D] content queries
    query_pos           [B, G, D] query positions, or None when the decoder derives them from the box
    boxes_cxcywh        [B, G, 4] normalised reference boxes (the positive anchors / proposals)
    labels              [B, G] int64 assigned class; `num_classes` at padding slots
    target_boxes_cxcywh [B, G, 4] normalised assigned ground-truth boxes (meaningless at padding)
    valid               [B, G] bool, True for real positives
    """

    content: Tensor
    query_pos: Optional[Tensor]
    boxes_cxcywh: Tensor
    labels: Tensor
    target_boxes_cxcywh: Tensor
    valid: Tensor

    @property
    def refpoints_unsig(self) -> Tensor:
        return inverse_sigmoid(self.boxes_cxcywh, REF_EPS)

    def fixed_assignment(self) -> Tuple[List[Dict[str, Tensor]], List[Tuple[Tensor, Tensor]]]:
        return fixed_assignment(self.labels, self.target_boxes_cxcywh, self.valid)


def fixed_assignment(labels: Tensor, target_boxes_cxcywh: Tensor,
                     valid: Tensor) -> Tuple[List[Dict[str, Tensor]], List[Tuple[Tensor, Tensor]]]:
    """A group's supervision as (per-image targets, matching): slot s of image b is matched to its
    own assigned ground truth. labels [B, G], target_boxes_cxcywh [B, G, 4], valid [B, G] bool."""
    targets, indices = [], []
    for b in range(valid.shape[0]):
        slots = torch.nonzero(valid[b]).flatten()
        targets.append({"labels": labels[b, slots], "boxes": target_boxes_cxcywh[b, slots]})
        indices.append((slots, torch.arange(slots.numel(), device=slots.device)))
    return targets, indices


def group_attention_mask(base_size: int, group_sizes: Sequence[int], base_mask: Optional[Tensor] = None,
                         device: Optional[torch.device] = None) -> Tensor:
    """Self-attention mask [N, N] bool (True = blocked), N = base_size + sum(group_sizes).

    The first `base_size` queries (main, with denoising queries in front for DINO) keep
    `base_mask` among themselves and see no group; each group sees only itself.
    """
    n = base_size + sum(group_sizes)
    mask = torch.ones(n, n, dtype=torch.bool, device=device)
    mask[:base_size, :base_size] = False if base_mask is None else base_mask.to(device)
    start = base_size
    for g in group_sizes:
        mask[start : start + g, start : start + g] = False
        start += g
    return mask


def choose_positives(counts: Sequence[int], cap: int, generator: Optional[torch.Generator] = None) -> List[Tensor]:
    """Per image the indices of the positives that become queries: all (ascending), or a random `cap` of them."""
    out = []
    for n in counts:
        if n <= cap:
            out.append(torch.arange(n))
        else:
            out.append(torch.randperm(n, generator=generator)[:cap].sort()[0])
    return out


class PositiveQueryBuilder(nn.Module):
    """Turns one head's `Positives` into a `QueryGroup` (one builder per auxiliary head)."""

    def __init__(self, d_model: int, pool_size: int = 3, with_query_pos: bool = False):
        super().__init__()
        self.d_model, self.pool_size, self.with_query_pos = d_model, pool_size, with_query_pos
        self.feat_proj = nn.Linear(d_model * pool_size**2, d_model)
        self.feat_norm = nn.LayerNorm(d_model)
        self.pos_proj = nn.Linear(2 * d_model, 2 * d_model if with_query_pos else d_model)
        self.pos_norm = nn.LayerNorm(2 * d_model if with_query_pos else d_model)
        self.generator: Optional[torch.Generator] = None

    def forward(self, features: Sequence[Tensor], strides: Sequence[float], image_hw: Tensor, positives: Positives,
                max_queries: int, num_classes: int) -> QueryGroup:
        """features per level [B, D, H_l, W_l]; image_hw [B, 2] (h, w) px; at most `max_queries` per image."""
        device = features[0].device
        chosen = choose_positives(positives.counts(), max_queries, self.generator)
        size = max([1] + [len(c) for c in chosen])
        boxes, labels, targets, valid = [], [], [], []
        for b, idx in enumerate(chosen):
            idx = idx.to(device)
            n, pad = idx.numel(), size - idx.numel()
            background = torch.full((pad,), num_classes, dtype=torch.int64, device=device)
            unused_box = torch.tensor([[0.5, 0.5, 1.0, 1.0]], device=device).expand(pad, 4)
            boxes.append(torch.cat([positives.boxes_xyxy[b][idx].float(), self._padding(positives, b, pad, image_hw[b])]))
            labels.append(torch.cat([positives.labels[b][idx], background]))
            targets.append(torch.cat([positives.gt_boxes_cxcywh[b][idx].float(), unused_box]))
            valid.append(torch.arange(size, device=device) < n)
        boxes_px = torch.stack([self._clip(bx, image_hw[b]) for b, bx in enumerate(boxes)])  # [B, G, 4]
        scale = torch.stack([image_hw[:, 1], image_hw[:, 0], image_hw[:, 1], image_hw[:, 0]], 1)[:, None]
        boxes_cxcywh = box_xyxy_to_cxcywh(boxes_px / scale).clamp(REF_EPS, 1 - REF_EPS)
        pooled = multilevel_roi_align(features, strides, boxes_to_rois(list(boxes_px)).to(device), self.pool_size)
        content = self.feat_norm(self.feat_proj(pooled.flatten(1))).view(len(chosen), size, self.d_model)
        sine = proposal_pos_embed(inverse_sigmoid(boxes_cxcywh, REF_EPS), self.d_model // 2)  # [B, G, 2D]
        pos = self.pos_norm(self.pos_proj(sine))
        query_pos = None
        if self.with_query_pos:
            query_pos, extra = pos.split(self.d_model, -1)
            content = content + extra
        else:
            content = content + pos
        return QueryGroup(content, query_pos, boxes_cxcywh, torch.stack(labels), torch.stack(targets),
                          torch.stack(valid))

    def _padding(self, positives: Positives, b: int, pad: int, image_hw: Tensor) -> Tensor:
        """`pad` background boxes [pad, 4]: random negatives of the head, else the whole image."""
        negatives = positives.negatives_xyxy[b]
        if pad == 0:
            return negatives.new_zeros(0, 4).float()
        if negatives.shape[0] == 0:
            whole = torch.stack([image_hw.new_zeros(()), image_hw.new_zeros(()), image_hw[1], image_hw[0]])
            return whole[None].expand(pad, 4).float()
        pick = torch.randint(negatives.shape[0], (pad,), generator=self.generator).to(negatives.device)
        return negatives[pick].float()

    @staticmethod
    def _clip(boxes_xyxy: Tensor, image_hw: Tensor) -> Tensor:
        """Clip to the image, keeping at least one pixel of width and height."""
        h, w = image_hw[0], image_hw[1]
        x0 = boxes_xyxy[:, 0].clamp(min=0).minimum(w - 1)
        y0 = boxes_xyxy[:, 1].clamp(min=0).minimum(h - 1)
        x1 = torch.maximum(boxes_xyxy[:, 2].minimum(w), x0 + 1)
        y1 = torch.maximum(boxes_xyxy[:, 3].minimum(h), y0 + 1)
        return torch.stack([x0, y0, x1, y1], -1)


__all__ = ["QueryGroup", "PositiveQueryBuilder", "fixed_assignment", "group_attention_mask", "choose_positives",
           "REF_EPS"]
