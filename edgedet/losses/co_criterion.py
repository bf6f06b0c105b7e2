"""`CoCriterion`: Co-DETR's loss = base family's loss + auxiliary heads + positive queries.

- Base: the family's own criterion (DINO's or Deformable DETR's), unchanged, on the main queries.
- Auxiliary heads: each head computes its own losses during the forward (they depend on its
  anchors and sampling) and returns them in `outputs["co_head_losses"]` (keys like
  `loss_cls_atss0`, `loss_roi_giou_rcnn1`); here they only get their weights.
- Positive queries (`outputs["co_query_outputs"]`): the base criterion's focal / L1 / GIoU losses
  with the head's fixed assignment (slot -> its assigned ground truth, no matching), on the last
  decoder layer (`loss_ce_pos{h}`, ...) and every earlier one (`loss_ce_pos{h}_{i}`); padding
  slots learn "no object". Weighted like the base keys, times the head's `aux_query_weight`.
Returned values are unweighted; `weight_dict` covers every key.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import Tensor, nn

from edgedet.losses.criterion import SetCriterion
from edgedet.nn.co_heads.positive_queries import fixed_assignment

QUERY_LOSSES = ("labels", "boxes")


class CoCriterion(nn.Module):
    """base: the family's SetCriterion; head_weights: weight of every auxiliary-head key;
    query_weights: per head, the positive-query weight (aux_query_weight)."""

    def __init__(self, base: SetCriterion, head_weights: Dict[str, float], query_weights: Sequence[float]):
        super().__init__()
        self.base = base
        self.head_weights = dict(head_weights)
        self.query_weights = list(query_weights)
        self.weight_dict: Dict[str, float] = {**base.weight_dict, **self.head_weights}

    def forward(self, outputs: Dict, targets: Sequence[Dict]) -> Dict[str, Tensor]:
        losses = self.base(outputs, targets)
        self.weight_dict.update({k: self.base.weight_dict[k] for k in losses})
        head_losses = outputs.get("co_head_losses") or {}
        unknown = [k for k in head_losses if k not in self.head_weights]
        if unknown:
            raise KeyError(f"auxiliary loss '{unknown[0]}' has no weight; build the criterion with model.build_criterion()")
        losses.update(head_losses)
        for h, group in enumerate(outputs.get("co_query_outputs") or []):
            losses.update(self.positive_query_losses(group, h))
        return losses

    def positive_query_losses(self, group: Dict, head: int) -> Dict[str, Tensor]:
        """Losses of one head's query group on every decoder layer, with its fixed assignment."""
        t = group["targets"]
        group_targets, indices = fixed_assignment(t["labels"], t["boxes"], t["valid"])
        num = self.base.num_boxes(group_targets, group["pred_logits"].device)
        suffix = f"_pos{head}"
        out = self.base.compute_layer(group, group_targets, num, suffix, QUERY_LOSSES, indices)
        for i, aux in enumerate(group.get("aux_outputs") or []):
            out.update(self.base.compute_layer(aux, group_targets, num, f"{suffix}_{i}", QUERY_LOSSES, indices))
        scale = self.query_weights[head]
        for key in out:
            base_key = key.replace(suffix, "")  # loss_ce_pos0_1 -> loss_ce_1
            self.weight_dict[key] = scale * self.base.weight_dict.get(base_key, self.base.weight_dict[key.split(suffix)[0]])
        return out

    def total_loss(self, losses: Dict[str, Tensor]) -> Tensor:
        """Weighted sum of `losses` (the scalar to back-propagate)."""
        terms = [v * self.weight_dict[k] for k, v in losses.items() if self.weight_dict.get(k, 0.0) != 0]
        if not terms:
            raise ValueError("CoCriterion.total_loss: no loss has a non-zero weight")
        return torch.stack(terms).sum()


__all__ = ["CoCriterion", "QUERY_LOSSES"]
