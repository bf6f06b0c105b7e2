"""Label assignment of Co-DETR's auxiliary heads: ATSS, max-IoU, and the random sampler.

Every assigner returns `gt_index` [A] int64 per anchor/proposal: the index of its ground-truth
box (>= 0), `NEGATIVE` (-1, background) or `IGNORED` (-2, between the IoU thresholds: no loss).
Boxes are xyxy in pixels.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from edgedet.nn.box_ops import box_iou
from edgedet.nn.co_heads.anchors import anchor_centres

NEGATIVE = -1
IGNORED = -2


def atss_assign(anchors_xyxy: Tensor, num_per_level: Sequence[int], gt_xyxy: Tensor, topk: int = 9) -> Tuple[Tensor, Tensor]:
    """Adaptive Training Sample Selection (Zhang et al. 2020).

    anchors_xyxy [A, 4] ordered level by level (`num_per_level` anchors each); gt_xyxy [G, 4].
    For each GT: the `topk` anchors of each level whose centres are closest to the GT centre are
    candidates; the IoU threshold is mean + std (unbiased) of the candidates' IoUs; a candidate
    is positive if its IoU reaches the threshold and its centre lies inside the GT (more than
    0.01 px from every edge). An anchor positive for several GTs takes the one of highest IoU.
    Returns gt_index [A] (>= 0 or NEGATIVE) and the IoU with the assigned GT [A] (0 for negatives).
    """
    num_anchors, num_gt = anchors_xyxy.shape[0], gt_xyxy.shape[0]
    if sum(num_per_level) != num_anchors:
        raise ValueError(f"atss_assign: num_per_level sums to {sum(num_per_level)} but there are {num_anchors} anchors")
    gt_index = torch.full((num_anchors,), NEGATIVE, dtype=torch.int64, device=anchors_xyxy.device)
    if num_gt == 0 or num_anchors == 0:
        return gt_index, anchors_xyxy.new_zeros(num_anchors)
    iou = box_iou(anchors_xyxy, gt_xyxy)[0]  # [A, G]
    gt_centres = (gt_xyxy[:, :2] + gt_xyxy[:, 2:]) / 2
    centres = anchor_centres(anchors_xyxy)
    dist = torch.cdist(centres, gt_centres)  # [A, G]
    candidates, start = [], 0
    for n in num_per_level:
        if n > 0:
            k = min(topk, n)
            candidates.append(dist[start : start + n].topk(k, dim=0, largest=False)[1] + start)
        start += n
    cand = torch.cat(candidates, 0)  # [sum k, G]
    cand_iou = iou.gather(0, cand)
    std = cand_iou.std(0) if cand_iou.shape[0] > 1 else torch.zeros_like(cand_iou[0])
    threshold = cand_iou.mean(0) + std
    cand_centres = centres[cand]  # [sum k, G, 2]
    lt = cand_centres - gt_xyxy[None, :, :2]
    rb = gt_xyxy[None, :, 2:] - cand_centres
    inside = torch.cat([lt, rb], -1).amin(-1) > 0.01
    positive = (cand_iou >= threshold[None]) & inside
    # Scatter into an [A, G] IoU table that keeps only positive (anchor, GT) pairs.
    table = torch.full_like(iou, -1.0)
    gt_cols = torch.arange(num_gt, device=iou.device).expand_as(cand)
    table[cand[positive], gt_cols[positive]] = cand_iou[positive]
    best_iou, best_gt = table.max(1)
    assigned = best_iou >= 0
    gt_index[assigned] = best_gt[assigned]
    return gt_index, torch.where(assigned, best_iou, torch.zeros_like(best_iou))


def max_iou_assign(boxes_xyxy: Tensor, gt_xyxy: Tensor, pos_iou: float, neg_iou: float, min_pos_iou: float = 0.0,
                   match_low_quality: bool = False) -> Tensor:
    """Max-IoU assignment (Faster R-CNN): [N, 4] boxes vs [G, 4] GTs -> gt_index [N].

    IoU >= pos_iou: positive for the best GT; IoU < neg_iou: NEGATIVE; otherwise IGNORED.
    With `match_low_quality`, every box whose IoU equals a GT's best IoU (and is >= min_pos_iou)
    becomes positive for that GT, so each GT gets at least one box (RPN).
    """
    n = boxes_xyxy.shape[0]
    gt_index = torch.full((n,), IGNORED, dtype=torch.int64, device=boxes_xyxy.device)
    if gt_xyxy.shape[0] == 0:
        gt_index[:] = NEGATIVE
        return gt_index
    if n == 0:
        return gt_index
    iou = box_iou(boxes_xyxy, gt_xyxy)[0]
    best_iou, best_gt = iou.max(1)
    gt_index[best_iou < neg_iou] = NEGATIVE
    pos = best_iou >= pos_iou
    gt_index[pos] = best_gt[pos]
    if match_low_quality:
        gt_best = iou.max(0)[0]  # [G]
        for g in range(gt_xyxy.shape[0]):  # in GT order, so a later GT wins ties, as the reference does
            if gt_best[g] > 0 and gt_best[g] >= min_pos_iou:
                gt_index[iou[:, g] == gt_best[g]] = g
    return gt_index


def random_sample(gt_index: Tensor, num: int, pos_fraction: float,
                  generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """Sample at most `num` boxes: up to num · pos_fraction positives, negatives fill the rest.

    gt_index [N] from an assigner. Returns (positive indices, negative indices), each int64 and
    in ascending order; random choices come from `generator` (seeded -> reproducible).
    """
    pos = torch.nonzero(gt_index >= 0).flatten()
    neg = torch.nonzero(gt_index == NEGATIVE).flatten()
    num_pos = min(pos.numel(), int(num * pos_fraction))
    num_neg = min(neg.numel(), num - num_pos)

    def choose(idx: Tensor, k: int) -> Tensor:
        if k >= idx.numel():
            return idx
        perm = torch.randperm(idx.numel(), generator=generator)[:k].to(idx.device)
        return idx[perm].sort()[0]

    return choose(pos, num_pos), choose(neg, num_neg)


__all__ = ["NEGATIVE", "IGNORED", "atss_assign", "max_iou_assign", "random_sample"]
