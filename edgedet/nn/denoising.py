"""Contrastive denoising (CDN) queries of DINO (Zhang et al. 2022), built from ground truth.

During training every ground-truth box is copied into several *groups*; each group holds one
noised positive and one noised negative copy of every box of the image:

- positives: each box corner moves by less than `box_noise_scale` (λ1) times half the box size,
  so they should reconstruct their box;
- negatives: each corner moves by between λ1 and λ2 = 2·λ1 half-sizes, so they should predict
  "no object".
- labels: with probability `label_noise_ratio / 2` a copy gets a uniformly random class (which
  may equal the true one), as the reference implementation does.

Layout per image (pad_size = 2·max_gt·num_groups queries in front of the matching queries):
block k = 0 .. 2·num_groups−1 of `max_gt` slots; block 2g holds group g's positives, block 2g+1
its negatives; box j of the image sits at slot j of its block. Slots beyond an image's own box
count stay zero (padding) and are trained towards "no object".

The self-attention mask [pad_size + Q, pad_size + Q] (True = may not attend) keeps the groups
from seeing each other and keeps the matching queries from seeing any denoising query (which
would leak ground truth); denoising queries may look at the matching queries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from edgedet.nn.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, inverse_sigmoid

# DINO clamps inverse_sigmoid at 1e-3, so noised boxes touching the border stay finite.
DN_INVERSE_SIGMOID_EPS = 1e-3


@dataclass
class DenoisingQueries:
    """Denoising inputs for the decoder.

    query_label     [B, pad_size, D] label embeddings (zeros at padding slots)
    query_bbox_unsig [B, pad_size, 4] noised cxcywh boxes before sigmoid (zeros at padding)
    attn_mask       [pad_size + Q, pad_size + Q] bool, True where attention is blocked
    dn_meta         {"pad_size": int, "num_dn_group": int}
    """

    query_label: Tensor
    query_bbox_unsig: Tensor
    attn_mask: Tensor
    dn_meta: Dict[str, int]


def prepend_denoising(dn: Optional[DenoisingQueries], content: Tensor,
                      refpoints_unsig: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """The decoder's queries with the denoising groups in front, and the mask that keeps the groups from
    seeing each other and the matching queries: (content, refpoints_unsig, attn_mask); unchanged and no
    mask without denoising."""
    if dn is None:
        return content, refpoints_unsig, None
    return torch.cat([dn.query_label, content], 1), torch.cat([dn.query_bbox_unsig, refpoints_unsig], 1), dn.attn_mask


def build_label_encoder(labelbook_size: int, hidden_dim: int) -> nn.Embedding:
    """Label book of the denoising queries: `labelbook_size + 1` rows (DINO's `label_enc`)."""
    return nn.Embedding(labelbook_size + 1, hidden_dim)


def num_dn_groups(dn_number: int, max_gt: int) -> int:
    """Groups that fit a budget of `dn_number` positive/negative pairs: max(1, dn_number // max_gt).

    Equals the reference's rule for its defaults (dn_number >= 50).
    """
    if max_gt == 0:
        return 1
    return max(1, dn_number // max_gt)


def noise_labels(labels: Tensor, label_noise_ratio: float, num_classes: int) -> Tensor:
    """Replace each label by a uniform random class with probability label_noise_ratio / 2. [n] -> [n]."""
    if label_noise_ratio <= 0 or labels.numel() == 0:
        return labels.clone()
    flip = torch.rand(labels.shape, device=labels.device) < label_noise_ratio * 0.5
    random_labels = torch.randint(0, num_classes, labels.shape, device=labels.device, dtype=labels.dtype)
    return torch.where(flip, random_labels, labels)


def noise_boxes_cxcywh(boxes_cxcywh: Tensor, negative: Tensor, box_noise_scale: float) -> Tensor:
    """Jitter box corners: positives by |δ| < λ·(w/2, h/2), negatives by λ·(w/2, h/2) <= |δ| < 2λ·(w/2, h/2).

    boxes_cxcywh [n, 4] normalised; negative [n] bool; result clamped to the image, [n, 4] cxcywh.
    """
    if box_noise_scale <= 0 or boxes_cxcywh.numel() == 0:
        return boxes_cxcywh.clone()
    xyxy = box_cxcywh_to_xyxy(boxes_cxcywh)
    half_wh = boxes_cxcywh[:, 2:] / 2
    half = torch.cat([half_wh, half_wh], dim=1)
    sign = torch.randint(0, 2, boxes_cxcywh.shape, device=boxes_cxcywh.device).to(boxes_cxcywh.dtype) * 2.0 - 1.0
    magnitude = torch.rand_like(boxes_cxcywh) + negative[:, None].to(boxes_cxcywh.dtype)
    xyxy = (xyxy + sign * magnitude * half * box_noise_scale).clamp(0.0, 1.0)
    return box_xyxy_to_cxcywh(xyxy)


def cdn_attention_mask(pad_size: int, num_groups: int, num_queries: int, device: Optional[torch.device] = None) -> Tensor:
    """[pad_size + Q, pad_size + Q] bool, True = blocked: groups apart, matching queries blind to dn queries."""
    size = pad_size + num_queries
    mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    mask[pad_size:, :pad_size] = True
    group = pad_size // num_groups if num_groups else 0
    for g in range(num_groups):
        rows = slice(g * group, (g + 1) * group)
        mask[rows, : g * group] = True
        mask[rows, (g + 1) * group : pad_size] = True
    return mask


def build_cdn_queries(
    targets: Sequence[Dict[str, Tensor]],
    label_enc: nn.Embedding,
    num_queries: int,
    num_classes: int,
    dn_number: int,
    label_noise_ratio: float,
    box_noise_scale: float,
) -> Optional[DenoisingQueries]:
    """Contrastive denoising queries for a batch; None when no image has a box (nothing to denoise).

    targets: per image `labels` [n] int64 and `boxes` [n, 4] normalised cxcywh.
    """
    device = label_enc.weight.device
    counts = [int(t["labels"].numel()) for t in targets]
    max_gt = max(counts) if counts else 0
    if dn_number <= 0 or max_gt == 0:
        return None
    groups = num_dn_groups(dn_number, max_gt)
    pad_size = 2 * max_gt * groups
    batch = len(targets)

    labels = torch.cat([t["labels"] for t in targets]).to(device=device, dtype=torch.int64)
    boxes = torch.cat([t["boxes"] for t in targets]).to(device=device, dtype=label_enc.weight.dtype)
    image_idx = torch.cat([torch.full((n,), i, dtype=torch.int64, device=device) for i, n in enumerate(counts)])
    slot = torch.cat([torch.arange(n, device=device) for n in counts])
    total = labels.numel()

    # Block k (0 .. 2·groups−1) repeats every box of the batch; odd blocks are the negatives.
    blocks = torch.arange(2 * groups, device=device).repeat_interleave(total)
    known_labels = noise_labels(labels.repeat(2 * groups), label_noise_ratio, num_classes)
    known_boxes = noise_boxes_cxcywh(boxes.repeat(2 * groups, 1), blocks % 2 == 1, box_noise_scale)
    known_image = image_idx.repeat(2 * groups)
    known_slot = slot.repeat(2 * groups) + blocks * max_gt

    query_label = label_enc.weight.new_zeros(batch, pad_size, label_enc.embedding_dim)
    query_bbox = label_enc.weight.new_zeros(batch, pad_size, 4)
    query_label[known_image, known_slot] = label_enc(known_labels)
    query_bbox[known_image, known_slot] = inverse_sigmoid(known_boxes, DN_INVERSE_SIGMOID_EPS)

    attn_mask = cdn_attention_mask(pad_size, groups, num_queries, device)
    return DenoisingQueries(query_label, query_bbox, attn_mask, {"pad_size": pad_size, "num_dn_group": groups})


def split_dn(tensor: Tensor, dn_meta: Optional[Dict[str, int]], dim: int = 1) -> List[Tensor]:
    """Split a [.., pad_size + Q, ..] tensor along `dim` into (denoising part, matching part)."""
    pad = dn_meta["pad_size"] if dn_meta else 0
    return [tensor.narrow(dim, 0, pad), tensor.narrow(dim, pad, tensor.shape[dim] - pad)]


def dn_positive_indices(targets: Sequence[Dict[str, Tensor]], dn_meta: Dict[str, int]) -> List[tuple]:
    """The fixed matching of denoising outputs: per image (query_idx, target_idx) of every positive query.

    Positive copy of box j in group g sits at query 2·g·max_gt + j.
    """
    groups, pad = dn_meta["num_dn_group"], dn_meta["pad_size"]
    group_size = pad // groups
    out = []
    for t in targets:
        n = int(t["labels"].numel())
        device = t["labels"].device
        tgt = torch.arange(n, device=device).repeat(groups)
        offsets = (torch.arange(groups, device=device) * group_size).repeat_interleave(n)
        out.append((offsets + tgt, tgt))
    return out


__all__ = [
    "DenoisingQueries",
    "build_label_encoder",
    "num_dn_groups",
    "noise_labels",
    "noise_boxes_cxcywh",
    "cdn_attention_mask",
    "build_cdn_queries",
    "split_dn",
    "dn_positive_indices",
]
