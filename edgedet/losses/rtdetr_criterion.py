"""`RTDETRCriterion`: RT-DETRv2's losses (the official RTDETRCriterionv2 with its released weights).

- Classification: varifocal loss (`loss_vfl`, IoU-aware targets, alpha 0.75, gamma 2).
- Boxes: L1 (`loss_bbox`) and GIoU (`loss_giou`) on Hungarian-matched pairs (matcher costs
  class 2 focal / L1 5 / GIoU 2).
- Every earlier decoder layer (`_0`, `_1`, ...), the selected encoder proposals (`_enc`; with
  the real labels unless the query selection is class-agnostic) and the denoising queries
  (`_dn`, `_dn_{i}`, fixed assignment, normalised by num_boxes · groups) get the same losses.
Weights: vfl 1, bbox 5, giou 2 for every suffix. Returns unweighted losses; `total_loss` weighs.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from edgedet.losses.dn_criterion import DINOCriterion
from edgedet.losses.matcher import HungarianMatcher
from edgedet.losses.varifocal import varifocal_loss
from edgedet.nn.box_ops import box_cxcywh_to_xyxy, box_iou

RTDETR_LOSSES = ("loss_vfl", "loss_bbox", "loss_giou")


class RTDETRCriterion(DINOCriterion):
    def __init__(self, num_classes: int, matcher, weight_dict: Dict[str, float], vfl_alpha: float = 0.75,
                 vfl_gamma: float = 2.0, class_agnostic_encoder: bool = False):
        self.vfl_alpha, self.vfl_gamma = vfl_alpha, vfl_gamma
        self.class_agnostic_encoder = class_agnostic_encoder
        super().__init__(num_classes, matcher, weight_dict, losses=("vfl", "boxes", "cardinality"))

    @property
    def loss_map(self):
        return {**super().loss_map, "vfl": self.loss_vfl}

    def loss_vfl(self, outputs: Dict, targets: Sequence[Dict], indices, num_boxes: float) -> Dict[str, Tensor]:
        logits = outputs["pred_logits"]
        idx = self._src_permutation_idx(indices)
        src = outputs["pred_boxes"][idx].float()
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src)
        ious = torch.diag(box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))[0]).detach() if len(src) else src.new_zeros(0)
        # "no object" = one past the last column, so the 1-column class-agnostic encoder head works too
        classes = torch.full(logits.shape[:2], logits.shape[-1], dtype=torch.int64, device=logits.device)
        if len(src):
            classes[idx] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        positive = F.one_hot(classes, logits.shape[-1] + 1)[..., :-1].float()
        score = torch.zeros(logits.shape[:2], dtype=torch.float32, device=logits.device)
        score[idx] = ious
        loss = varifocal_loss(logits.float(), score.unsqueeze(-1) * positive, positive, num_boxes, self.vfl_alpha, self.vfl_gamma)
        return {"loss_vfl": loss}

    def encoder_targets(self, targets: Sequence[Dict]):
        if not self.class_agnostic_encoder:
            return list(targets)
        return [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]

    def denoising_losses(self, outputs: Dict, targets: Sequence[Dict], num_boxes: float, dn_meta: Dict[str, int],
                         trained: Sequence[str]) -> Dict[str, Tensor]:
        if outputs.get("dn_outputs") is None or dn_meta.get("pad_size", 0) == 0:
            zero = outputs["pred_logits"].sum() * 0.0
            num_aux = len(outputs.get("aux_outputs") or [])
            return {k + s: zero for s in ["_dn"] + [f"_dn_{i}" for i in range(num_aux)] for k in RTDETR_LOSSES}
        return super().denoising_losses(outputs, targets, num_boxes, dn_meta, trained)


def build_rtdetr_criterion(cfg) -> RTDETRCriterion:
    """Matcher + weights from an `RTDETRConfig` (suffixed keys inherit the base weights)."""
    matcher = HungarianMatcher(cost_class=cfg.set_cost_class, cost_bbox=cfg.set_cost_bbox, cost_giou=cfg.set_cost_giou,
                               focal=True, focal_alpha=cfg.focal_alpha)
    weights = {"loss_vfl": cfg.vfl_loss_coef, "loss_bbox": cfg.bbox_loss_coef, "loss_giou": cfg.giou_loss_coef}
    return RTDETRCriterion(cfg.num_classes, matcher, weights, cfg.vfl_alpha, cfg.vfl_gamma,
                           class_agnostic_encoder=cfg.query_select_method == "agnostic")


__all__ = ["RTDETRCriterion", "build_rtdetr_criterion", "RTDETR_LOSSES"]
