"""`RFDETRCriterion`: RF-DETR's losses (the official SetCriterion with `ia_bce_loss`, its released default).

- Group DETR: while training the model returns `group_detr` query groups side by side; each group is
  matched to the targets on its own (Hungarian, focal class cost 2 / L1 5 / GIoU 2) and the box count
  that normalises every loss is multiplied by the number of groups. At eval there is one group.
- Classification: IoU-aware BCE over all query x column logits. At a matched (query, label):
  t = max(p^alpha * IoU^(1 - alpha), 0.01) (detached) is the positive weight and 1 - t the negative
  one; elsewhere the negative weight is p^2. loss = sum(w_neg * x - logsigmoid(x) * (w_pos + w_neg)) / num_boxes.
- Boxes: L1 (`loss_bbox`) and GIoU (`loss_giou`) on the matched pairs.
- Every earlier decoder layer (`_0`, ...) and the two-stage proposals (`_enc`, matched with the real
  labels, groups as the decoder's) get the same losses. Weights: ce 1, bbox 5, giou 2 for every suffix.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from edgedet.losses.criterion import SetCriterion
from edgedet.losses.matcher import HungarianMatcher
from edgedet.nn.box_ops import box_cxcywh_to_xyxy, box_iou

Indices = List[Tuple[Tensor, Tensor]]


class GroupHungarianMatcher(HungarianMatcher):
    """Hungarian matching run per query group (queries split into `groups` equal consecutive chunks)."""

    @torch.no_grad()
    def forward(self, outputs: Dict[str, Tensor], targets: Sequence[Dict[str, Tensor]], groups: int = 1) -> Indices:
        if groups == 1:
            return super().forward(outputs, targets)
        q = outputs["pred_logits"].shape[1]
        if q % groups:
            raise ValueError(f"{q} queries do not split into {groups} groups")
        per = q // groups
        parts: List[List[Tuple[Tensor, Tensor]]] = [[] for _ in targets]
        for g in range(groups):
            chunk = {k: outputs[k][:, g * per:(g + 1) * per] for k in ("pred_logits", "pred_boxes")}
            for i, (src, tgt) in enumerate(super().forward(chunk, targets)):
                parts[i].append((src + g * per, tgt))
        return [(torch.cat([s for s, _ in p]), torch.cat([t for _, t in p])) for p in parts]


class RFDETRCriterion(SetCriterion):
    def __init__(self, num_classes: int, matcher: GroupHungarianMatcher, weight_dict: Dict[str, float],
                 focal_alpha: float = 0.25):
        super().__init__(num_classes, matcher, weight_dict, losses=("labels", "boxes", "cardinality"), loss_class="focal",
                         focal_alpha=focal_alpha)

    def loss_labels(self, outputs: Dict, targets: Sequence[Dict], indices: Indices, num_boxes: float) -> Dict[str, Tensor]:
        logits = outputs["pred_logits"].float()
        b_idx, q_idx = self._src_permutation_idx(indices)
        labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        prob = logits.sigmoid()
        pos = torch.zeros_like(logits)
        neg = prob ** 2
        if len(labels):
            src = outputs["pred_boxes"][b_idx, q_idx].detach().float()
            tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src)
            iou = torch.diag(box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))[0])
            t = (prob[b_idx, q_idx, labels].pow(self.focal_alpha) * iou.pow(1 - self.focal_alpha)).clamp(min=0.01).detach()
            pos = pos.index_put((b_idx, q_idx, labels), t)
            neg = neg.index_put((b_idx, q_idx, labels), 1 - t)
        loss = neg * logits - F.logsigmoid(logits) * (pos + neg)
        return {"loss_ce": loss.sum() / num_boxes}

    def encoder_targets(self, targets: Sequence[Dict]) -> List[Dict]:
        return list(targets)  # the two-stage heads score the real classes

    def forward(self, outputs: Dict, targets: Sequence[Dict]) -> Dict[str, Tensor]:
        groups = int(outputs.get("group_detr", 1))
        num_boxes = self.num_boxes(targets, outputs["pred_logits"].device) * groups

        def layer(out: Dict, suffix: str, names: Sequence[str]) -> Dict[str, Tensor]:
            indices = self.matcher(out, targets, groups)
            return self.compute_layer(out, targets, num_boxes, suffix, names, indices)

        losses = layer({k: outputs[k] for k in ("pred_logits", "pred_boxes")}, "", self.losses)
        for i, aux in enumerate(outputs.get("aux_outputs") or []):
            losses.update(layer(aux, f"_{i}", self.losses))
        if outputs.get("enc_outputs") is not None:
            losses.update(layer(outputs["enc_outputs"], "_enc", ["labels", "boxes"]))
        self._cover_weights(losses)
        return losses


def build_rfdetr_criterion(cfg) -> RFDETRCriterion:
    matcher = GroupHungarianMatcher(cost_class=cfg.set_cost_class, cost_bbox=cfg.set_cost_bbox, cost_giou=cfg.set_cost_giou,
                                    focal=True, focal_alpha=cfg.focal_alpha)
    weights = {"loss_ce": cfg.cls_loss_coef, "loss_bbox": cfg.bbox_loss_coef, "loss_giou": cfg.giou_loss_coef}
    return RFDETRCriterion(cfg.num_classes, matcher, weights, cfg.focal_alpha)


__all__ = ["RFDETRCriterion", "GroupHungarianMatcher", "build_rfdetr_criterion"]
