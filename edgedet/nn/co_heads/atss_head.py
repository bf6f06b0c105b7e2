"""ATSS auxiliary head (Zhang et al. 2020) as Co-DETR uses it on the encoder's pyramid.

Shared over levels: `num_convs` 3x3 conv + GroupNorm + ReLU towers for classification and
regression, then a 3x3 conv each for class logits (sigmoid, focal loss), box deltas (scaled per
level by a learned scalar, decoded against the anchor, GIoU loss weighted by the centre-ness
target) and centre-ness (BCE). One square anchor of side `anchor_scale` · stride per cell,
assigned by ATSS. Losses: `loss_cls`, `loss_giou`, `loss_centerness`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.losses.focal import sigmoid_focal_loss
from edgedet.nn.co_heads.anchors import anchor_centres, grid_anchors, inside_image
from edgedet.nn.co_heads.assigners import IGNORED, NEGATIVE, atss_assign
from edgedet.nn.co_heads.box_coding import decode_deltas
from edgedet.nn.co_heads.common import (AUX_HEADS, AuxHeadConfig, Positives, gt_boxes_pixels, paired_giou, stack_padded,
                                        zero_loss)

DELTA_STDS = (0.1, 0.1, 0.2, 0.2)


@dataclass
class ATSSHeadConfig(AuxHeadConfig):
    type: str = "atss"
    topk: int = 9
    num_convs: int = 1
    anchor_scale: float = 8.0
    cls_loss_coef: float = 1.0
    giou_loss_coef: float = 2.0
    centerness_loss_coef: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def centerness_targets(anchors_xyxy: Tensor, gt_xyxy: Tensor) -> Tensor:
    """sqrt(min(l, r) / max(l, r) · min(t, b) / max(t, b)) of each anchor centre in its GT box. [N]."""
    c = anchor_centres(anchors_xyxy)
    l, t = c[:, 0] - gt_xyxy[:, 0], c[:, 1] - gt_xyxy[:, 1]
    r, b = gt_xyxy[:, 2] - c[:, 0], gt_xyxy[:, 3] - c[:, 1]
    lr = torch.stack([l, r], 1)
    tb = torch.stack([t, b], 1)
    ratio = (lr.amin(1) / lr.amax(1)) * (tb.amin(1) / tb.amax(1))
    return ratio.clamp(min=0).sqrt()


def _tower(d: int, n: int) -> nn.Sequential:
    layers: List[nn.Module] = []
    for _ in range(n):
        layers += [nn.Conv2d(d, d, 3, padding=1), nn.GroupNorm(min(32, d), d), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


@AUX_HEADS.register("atss", config=ATSSHeadConfig)
class ATSSHead(nn.Module):
    """forward(features, strides, image_hw, targets) -> (losses, Positives); see `common`."""

    def __init__(self, cfg: ATSSHeadConfig, d_model: int, num_classes: int, num_levels: int):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.cls_convs = _tower(d_model, cfg.num_convs)
        self.reg_convs = _tower(d_model, cfg.num_convs)
        self.atss_cls = nn.Conv2d(d_model, num_classes, 3, padding=1)
        self.atss_reg = nn.Conv2d(d_model, 4, 3, padding=1)
        self.atss_centerness = nn.Conv2d(d_model, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(num_levels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0.0)
        nn.init.constant_(self.atss_cls.bias, -math.log((1 - 0.01) / 0.01))  # focal prior p = 0.01

    def loss_weights(self) -> Dict[str, float]:
        c = self.cfg
        return {"loss_cls": c.cls_loss_coef, "loss_giou": c.giou_loss_coef, "loss_centerness": c.centerness_loss_coef}

    def predict(self, features: Sequence[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """-> logits [B, A, C], deltas [B, A, 4], centre-ness logits [B, A] over all levels' cells."""
        logits, deltas, ctr = [], [], []
        for lvl, f in enumerate(features):
            cls_feat, reg_feat = self.cls_convs(f), self.reg_convs(f)
            logits.append(self.atss_cls(cls_feat).flatten(2).transpose(1, 2))
            deltas.append((self.atss_reg(reg_feat) * self.scales[lvl]).flatten(2).transpose(1, 2))
            ctr.append(self.atss_centerness(reg_feat).flatten(1))
        return torch.cat(logits, 1), torch.cat(deltas, 1), torch.cat(ctr, 1)

    def assign(self, anchors_xyxy: Tensor, num_per_level: Sequence[int], image_hw: Tensor,
               targets: Sequence[Dict[str, Tensor]]) -> Tuple[Tensor, List[Tensor]]:
        """gt_index [B, A] (GT index, NEGATIVE or IGNORED for anchors centred in the padding) and
        each image's GT boxes in pixels (xyxy)."""
        rows, gts = [], []
        level_of = torch.repeat_interleave(torch.arange(len(num_per_level), device=anchors_xyxy.device),
                                           torch.as_tensor(list(num_per_level), device=anchors_xyxy.device))
        for b, t in enumerate(targets):
            valid = inside_image(anchors_xyxy, image_hw[b])
            idx = torch.nonzero(valid).flatten()
            counts = torch.bincount(level_of[idx], minlength=len(num_per_level)).tolist()
            gt = gt_boxes_pixels(t, image_hw[b])
            assigned, _ = atss_assign(anchors_xyxy[idx], counts, gt, self.cfg.topk)
            row = torch.full((anchors_xyxy.shape[0],), IGNORED, dtype=torch.int64, device=anchors_xyxy.device)
            row[idx] = assigned
            rows.append(row)
            gts.append(gt)
        return torch.stack(rows), gts

    def forward(self, features: Sequence[Tensor], strides: Sequence[float], image_hw: Tensor,
                targets: Sequence[Dict[str, Tensor]]) -> Tuple[Dict[str, Tensor], Positives]:
        logits, deltas, ctr = self.predict(features)
        shapes = [tuple(f.shape[-2:]) for f in features]
        levels = grid_anchors(shapes, strides, [self.cfg.anchor_scale], [1.0], device=logits.device)
        anchors = torch.cat(levels, 0)
        with torch.no_grad():
            gt_index, gts = self.assign(anchors, [a.shape[0] for a in levels], image_hw, targets)
        pos_b, pos_a = torch.nonzero(gt_index >= 0, as_tuple=True)
        num_pos = max(1.0, float(pos_b.numel()))
        cls_target = torch.zeros_like(logits, dtype=torch.float32)
        pos_g = gt_index[pos_b, pos_a]
        pos_labels = stack_padded([t["labels"].to(logits.device) for t in targets])[pos_b, pos_g]
        cls_target[pos_b, pos_a, pos_labels] = 1.0
        valid = gt_index != IGNORED
        loss_cls = sigmoid_focal_loss(logits[valid].float(), cls_target[valid], num_pos, self.cfg.focal_alpha,
                                      self.cfg.focal_gamma)
        if pos_b.numel():
            pos_anchors = anchors[pos_a]
            pos_gt = stack_padded(gts)[pos_b, pos_g]
            ctr_t = centerness_targets(pos_anchors, pos_gt)
            decoded = decode_deltas(pos_anchors, deltas[pos_b, pos_a].float(), DELTA_STDS)
            giou = paired_giou(decoded, pos_gt)
            loss_giou = ((1 - giou) * ctr_t).sum() / ctr_t.sum().clamp(min=1e-6)
            loss_ctr = F.binary_cross_entropy_with_logits(ctr[pos_b, pos_a].float(), ctr_t, reduction="sum") / num_pos
        else:
            loss_giou = zero_loss(deltas)
            loss_ctr = zero_loss(ctr)
        losses = {"loss_cls": loss_cls, "loss_giou": loss_giou, "loss_centerness": loss_ctr}
        return losses, self._positives(anchors, gt_index, targets)

    @staticmethod
    def _positives(anchors: Tensor, gt_index: Tensor, targets: Sequence[Dict[str, Tensor]]) -> Positives:
        boxes, labels, gt_boxes, negatives = [], [], [], []
        for b, t in enumerate(targets):
            pos = torch.nonzero(gt_index[b] >= 0).flatten()
            g = gt_index[b, pos]
            boxes.append(anchors[pos])
            labels.append(t["labels"].to(anchors.device)[g])
            gt_boxes.append(t["boxes"].to(anchors)[g])
            negatives.append(anchors[gt_index[b] == NEGATIVE])
        return Positives(boxes, labels, gt_boxes, negatives)


__all__ = ["ATSSHead", "ATSSHeadConfig", "centerness_targets", "DELTA_STDS"]
