"""`DINOCriterion`: DINO's losses = set losses + denoising losses + encoder-proposal losses.

- Matching queries: Hungarian-matched focal / L1 / GIoU losses on the last layer and, suffixed
  `_0`, `_1`, ..., on every earlier decoder layer (as `SetCriterion`).
- Denoising queries (`dn_outputs`, training only): the assignment is known by construction —
  the positive copy of box j in group g is query 2·g·max_gt + j — so nothing is matched.
  Positives regress their box and classify their label; negatives and padding slots are pushed
  to "no object" (all-zero focal targets). Keys `loss_ce_dn`, `loss_bbox_dn`, `loss_giou_dn`
  (+ `_dn_{i}` per earlier layer), normalised by num_boxes · num_groups. When a training forward
  had no box to denoise (`dn_meta.pad_size == 0`) they are zeros, so logged keys stay stable.
- Encoder proposals (`interm_outputs`): Hungarian-matched with the real labels, suffix `_interm`.
"""
from __future__ import annotations

from typing import Dict, Sequence

from torch import Tensor, nn

from edgedet.losses.criterion import SetCriterion
from edgedet.losses.matcher import HungarianMatcher
from edgedet.nn.denoising import dn_positive_indices

BASE_LOSSES = ("loss_ce", "loss_bbox", "loss_giou")


class DINOCriterion(SetCriterion):
    """SetCriterion (focal) plus denoising and interm losses. forward returns unweighted losses."""

    def __init__(self, num_classes: int, matcher: nn.Module, weight_dict: Dict[str, float], focal_alpha: float = 0.25,
                 losses: Sequence[str] = ("labels", "boxes", "cardinality")):
        super().__init__(num_classes, matcher, weight_dict, losses=losses, loss_class="focal", focal_alpha=focal_alpha)

    def forward(self, outputs: Dict, targets: Sequence[Dict]) -> Dict[str, Tensor]:
        losses = super().forward(outputs, targets)
        device = outputs["pred_logits"].device
        num_boxes = self.num_boxes(targets, device)
        trained = [name for name in self.losses if name != "cardinality"]
        interm = outputs.get("interm_outputs")
        if interm is not None:
            losses.update(self.compute_layer(interm, targets, num_boxes, "_interm", trained))
        dn_meta = outputs.get("dn_meta")
        if dn_meta is not None:
            losses.update(self.denoising_losses(outputs, targets, num_boxes, dn_meta, trained))
        self._cover_weights(losses)
        return losses

    def denoising_losses(self, outputs: Dict, targets: Sequence[Dict], num_boxes: float, dn_meta: Dict[str, int],
                         trained: Sequence[str]) -> Dict[str, Tensor]:
        """Losses of the denoising queries on every decoder layer, with the fixed assignment."""
        dn_out = outputs.get("dn_outputs")
        num_aux = len(outputs.get("aux_outputs") or [])
        if dn_out is None or dn_meta.get("pad_size", 0) == 0:
            zero = outputs["pred_logits"].sum() * 0.0
            suffixes = ["_dn"] + [f"_dn_{i}" for i in range(num_aux)]
            return {k + s: zero for s in suffixes for k in BASE_LOSSES}
        indices = dn_positive_indices(targets, dn_meta)
        norm = num_boxes * dn_meta["num_dn_group"]
        out = self.compute_layer(dn_out, targets, norm, "_dn", trained, indices=indices)
        for i, aux in enumerate(dn_out.get("aux_outputs") or []):
            out.update(self.compute_layer(aux, targets, norm, f"_dn_{i}", trained, indices=indices))
        return out


def dino_weight_dict(cls: float, bbox: float, giou: float, dec_layers: int, aux_loss: bool = True,
                     interm_coef: float = 1.0) -> Dict[str, float]:
    """Weights of every key DINOCriterion returns (as the official build: dn keys reuse the base weights)."""
    base = {"loss_ce": cls, "loss_bbox": bbox, "loss_giou": giou}
    weights = dict(base)
    weights.update({f"{k}_dn": v for k, v in base.items()})
    if aux_loss:
        for i in range(dec_layers - 1):
            weights.update({f"{k}_{i}": v for k, v in base.items()})
            weights.update({f"{k}_dn_{i}": v for k, v in base.items()})
    weights.update({f"{k}_interm": v * interm_coef for k, v in base.items()})
    return weights


def build_dino_criterion(cfg) -> DINOCriterion:
    """Matcher + weights from a `DINOConfig`."""
    matcher = HungarianMatcher(cost_class=cfg.set_cost_class, cost_bbox=cfg.set_cost_bbox, cost_giou=cfg.set_cost_giou,
                               focal=True, focal_alpha=cfg.focal_alpha)
    weights = dino_weight_dict(cfg.cls_loss_coef, cfg.bbox_loss_coef, cfg.giou_loss_coef, cfg.dec_layers, cfg.aux_loss,
                               cfg.interm_loss_coef)
    return DINOCriterion(cfg.num_classes, matcher, weights, focal_alpha=cfg.focal_alpha)


__all__ = ["DINOCriterion", "dino_weight_dict", "build_dino_criterion"]
