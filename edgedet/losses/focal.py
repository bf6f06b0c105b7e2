"""Sigmoid focal loss (Lin et al. 2017) as the Deformable-DETR family uses it for classification."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, num_boxes: float, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Focal loss summed over every element and divided by `num_boxes` (a scalar).

    logits, targets: [B, Q, C] (targets are 0/1 one-hot floats). `alpha < 0` disables the
    class-balancing factor. Dividing the full sum by the number of ground-truth boxes equals
    Deformable-DETR's `mean(1).sum() / num_boxes * Q`.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum() / num_boxes


def focal_class_cost(logits: Tensor, tgt_ids: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Matching cost of predicting classes `tgt_ids` [M] from logits [N, C] -> [N, M].

    The focal loss of a positive minus that of a negative at each target's class, so a confident
    correct class is cheap and the cost is on the same scale as the training loss.
    """
    prob = logits.sigmoid()
    neg = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
    return pos[:, tgt_ids] - neg[:, tgt_ids]


__all__ = ["sigmoid_focal_loss", "focal_class_cost"]
