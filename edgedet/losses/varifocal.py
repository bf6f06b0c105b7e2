"""Varifocal loss (Zhang et al. 2021, VarifocalNet) as RT-DETR trains its classifier with it."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def varifocal_loss(logits: Tensor, target_score: Tensor, positive: Tensor, num_boxes: float, alpha: float = 0.75,
                   gamma: float = 2.0) -> Tensor:
    """Summed over every element and divided by `num_boxes` (a scalar).

    logits [B, Q, C]; target_score [B, Q, C] = IoU of the matched box at its class, 0 elsewhere;
    positive [B, Q, C] 0/1 one-hot of the matched class. Positives are weighted by their IoU
    target, negatives by alpha·p^gamma (p = sigmoid, detached), so easy negatives fade out and
    the score learns to rank by localisation quality.
    """
    prob = logits.sigmoid().detach()
    weight = alpha * prob.pow(gamma) * (1 - positive) + target_score
    loss = F.binary_cross_entropy_with_logits(logits, target_score, weight=weight, reduction="none")
    return loss.sum() / num_boxes


__all__ = ["varifocal_loss"]
