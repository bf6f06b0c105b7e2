"""Faster R-CNN auxiliary head (Ren et al. 2015) as Co-DETR uses it on the encoder's pyramid.

RPN: a shared 3x3 conv, then per anchor an objectness logit (BCE) and box deltas (L1); anchors
are assigned by max IoU (with low-quality matches) and a random positive/negative sample is
trained. Proposals: per level the top `pre_nms_top_k` anchors by objectness, decoded, clipped,
NMS within each level, the best `post_nms_top_k` kept (no gradient). RoI head: proposals plus
the ground-truth boxes are assigned by max IoU and sampled; RoIAlign on the level the box size
picks, two fc layers, a (C + 1)-way classifier (cross-entropy, last = background) and box deltas
(class-specific or agnostic) decoded against the proposal and trained with GIoU.
Losses: `loss_rpn_cls`, `loss_rpn_bbox`, `loss_roi_cls`, `loss_roi_giou`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.nn.co_heads.anchors import grid_anchors, inside_image
from edgedet.nn.co_heads.assigners import max_iou_assign, random_sample
from edgedet.nn.co_heads.box_coding import batched_nms, clip_boxes, decode_deltas, encode_deltas
from edgedet.nn.co_heads.common import AUX_HEADS, AuxHeadConfig, Positives, gt_boxes_pixels, paired_giou, zero_loss
from edgedet.nn.co_heads.roi_align import boxes_to_rois, multilevel_roi_align

RPN_STDS = (1.0, 1.0, 1.0, 1.0)
ROI_STDS = (0.1, 0.1, 0.2, 0.2)


@dataclass
class RCNNHeadConfig(AuxHeadConfig):
    type: str = "rcnn"
    anchor_scales: List[float] = field(default_factory=lambda: [8.0])
    anchor_ratios: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    rpn_pos_iou: float = 0.7
    rpn_neg_iou: float = 0.3
    rpn_min_pos_iou: float = 0.3
    rpn_num_samples: int = 256
    rpn_pos_fraction: float = 0.5
    pre_nms_top_k: int = 1000  # per level
    post_nms_top_k: int = 1000  # per image
    nms_iou: float = 0.7
    roi_pos_iou: float = 0.5
    roi_num_samples: int = 512
    roi_pos_fraction: float = 0.25
    roi_size: int = 7
    sampling_ratio: int = 2
    fc_dim: int = 1024
    class_agnostic: bool = False
    rpn_cls_loss_coef: float = 1.0
    rpn_bbox_loss_coef: float = 1.0
    roi_cls_loss_coef: float = 1.0
    roi_giou_loss_coef: float = 10.0


class RPN(nn.Module):
    """Region proposal network over the pyramid (weights shared across levels)."""

    def __init__(self, d_model: int, num_anchors: int):
        super().__init__()
        self.rpn_conv = nn.Conv2d(d_model, d_model, 3, padding=1)
        self.rpn_cls = nn.Conv2d(d_model, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(d_model, num_anchors * 4, 1)
        for m in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.constant_(m.bias, 0.0)

    def forward(self, features: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """-> per level objectness [B, H·W·A] and deltas [B, H·W·A, 4] (cells row-major, anchors inner)."""
        scores, deltas = [], []
        for f in features:
            x = F.relu(self.rpn_conv(f))
            scores.append(self.rpn_cls(x).permute(0, 2, 3, 1).reshape(f.shape[0], -1))
            deltas.append(self.rpn_reg(x).permute(0, 2, 3, 1).reshape(f.shape[0], -1, 4))
        return scores, deltas


@AUX_HEADS.register("rcnn", config=RCNNHeadConfig)
class RCNNHead(nn.Module):
    """forward(features, strides, image_hw, targets) -> (losses, Positives); see `common`.

    `generator` (a torch.Generator, default None = global RNG) drives the random samplers.
    """

    def __init__(self, cfg: RCNNHeadConfig, d_model: int, num_classes: int, num_levels: int):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.generator: Optional[torch.Generator] = None
        self.rpn = RPN(d_model, len(cfg.anchor_scales) * len(cfg.anchor_ratios))
        self.fc1 = nn.Linear(d_model * cfg.roi_size**2, cfg.fc_dim)
        self.fc2 = nn.Linear(cfg.fc_dim, cfg.fc_dim)
        self.fc_cls = nn.Linear(cfg.fc_dim, num_classes + 1)
        self.fc_reg = nn.Linear(cfg.fc_dim, 4 if cfg.class_agnostic else 4 * num_classes)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.constant_(self.fc_cls.bias, 0.0)
        nn.init.constant_(self.fc_reg.bias, 0.0)

    def loss_weights(self) -> Dict[str, float]:
        c = self.cfg
        return {"loss_rpn_cls": c.rpn_cls_loss_coef, "loss_rpn_bbox": c.rpn_bbox_loss_coef,
                "loss_roi_cls": c.roi_cls_loss_coef, "loss_roi_giou": c.roi_giou_loss_coef}

    # ------------------------------------------------------------------ RPN

    def rpn_losses(self, scores: Tensor, deltas: Tensor, anchors: Tensor, image_hw: Tensor,
                   gts: List[Tensor]) -> Dict[str, Tensor]:
        """scores [B, N], deltas [B, N, 4] over all levels; anchors [N, 4]; gts per image [n, 4] xyxy px."""
        c = self.cfg
        cls_terms, box_terms, num_sampled = [], [], 0
        for b, gt in enumerate(gts):
            valid = torch.nonzero(inside_image(anchors, image_hw[b])).flatten()
            with torch.no_grad():
                assigned = max_iou_assign(anchors[valid], gt, c.rpn_pos_iou, c.rpn_neg_iou, c.rpn_min_pos_iou,
                                          match_low_quality=True)
                pos, neg = random_sample(assigned, c.rpn_num_samples, c.rpn_pos_fraction, self.generator)
            idx = torch.cat([valid[pos], valid[neg]])
            labels = torch.cat([scores.new_ones(pos.numel()), scores.new_zeros(neg.numel())])
            cls_terms.append(F.binary_cross_entropy_with_logits(scores[b, idx].float(), labels.float(), reduction="sum"))
            if pos.numel():
                target = encode_deltas(anchors[valid[pos]], gt[assigned[pos]], RPN_STDS)
                box_terms.append(F.l1_loss(deltas[b, valid[pos]].float(), target, reduction="sum"))
            num_sampled += idx.numel()
        norm = max(1.0, float(num_sampled))
        loss_box = torch.stack(box_terms).sum() / norm if box_terms else zero_loss(deltas)
        return {"loss_rpn_cls": torch.stack(cls_terms).sum() / norm, "loss_rpn_bbox": loss_box}

    @torch.no_grad()
    def proposals(self, scores: List[Tensor], deltas: List[Tensor], anchors: List[Tensor], image_hw: Tensor) -> List[Tensor]:
        """Per image [K, 4] xyxy proposals (top-k per level, decoded, clipped, NMS per level)."""
        c = self.cfg
        out = []
        for b in range(image_hw.shape[0]):
            boxes, box_scores, levels = [], [], []
            for lvl, (s, d, a) in enumerate(zip(scores, deltas, anchors)):
                s_b = s[b].float().masked_fill(~inside_image(a, image_hw[b]), float("-inf"))
                k = min(c.pre_nms_top_k, s_b.numel())
                top_s, top_i = s_b.topk(k)
                keep = torch.isfinite(top_s)
                top_s, top_i = top_s[keep], top_i[keep]
                box = clip_boxes(decode_deltas(a[top_i], d[b, top_i].float(), RPN_STDS), image_hw[b])
                big = ((box[:, 2] - box[:, 0]) > 1e-3) & ((box[:, 3] - box[:, 1]) > 1e-3)
                boxes.append(box[big])
                box_scores.append(top_s[big])
                levels.append(torch.full((int(big.sum()),), lvl, dtype=torch.int64, device=box.device))
            boxes_b, scores_b, levels_b = torch.cat(boxes), torch.cat(box_scores), torch.cat(levels)
            keep = batched_nms(boxes_b, scores_b, levels_b, c.nms_iou)[: c.post_nms_top_k]
            out.append(boxes_b[keep])
        return out

    # ------------------------------------------------------------------ RoI head

    def roi_forward(self, features: Sequence[Tensor], strides: Sequence[float], rois: Tensor) -> Tuple[Tensor, Tensor]:
        """rois [R, 5] -> class logits [R, C + 1] and deltas [R, 4] or [R, C, 4]."""
        x = multilevel_roi_align(features, strides, rois, self.cfg.roi_size, self.cfg.sampling_ratio).flatten(1)
        x = F.relu(self.fc2(F.relu(self.fc1(x))))
        deltas = self.fc_reg(x)
        if not self.cfg.class_agnostic:
            deltas = deltas.view(-1, self.num_classes, 4)
        return self.fc_cls(x), deltas

    def forward(self, features: Sequence[Tensor], strides: Sequence[float], image_hw: Tensor,
                targets: Sequence[Dict[str, Tensor]]) -> Tuple[Dict[str, Tensor], Positives]:
        c = self.cfg
        shapes = [tuple(f.shape[-2:]) for f in features]
        anchors = grid_anchors(shapes, strides, c.anchor_scales, c.anchor_ratios, device=features[0].device)
        scores, deltas = self.rpn(features)
        gts = [gt_boxes_pixels(t, image_hw[b]) for b, t in enumerate(targets)]
        losses = self.rpn_losses(torch.cat(scores, 1), torch.cat(deltas, 1), torch.cat(anchors, 0), image_hw, gts)
        proposals = self.proposals(scores, deltas, anchors, image_hw)

        sampled, labels, gt_sampled, pos_mask = [], [], [], []
        positives = Positives([], [], [], [])
        for b, t in enumerate(targets):
            props = torch.cat([proposals[b], gts[b]], 0)  # the GT boxes themselves are proposals too
            assigned = max_iou_assign(props, gts[b], c.roi_pos_iou, c.roi_pos_iou, c.roi_pos_iou)
            pos, neg = random_sample(assigned, c.roi_num_samples, c.roi_pos_fraction, self.generator)
            g = assigned[pos]
            tgt_labels = t["labels"].to(props.device)
            sampled.append(torch.cat([props[pos], props[neg]]))
            labels.append(torch.cat([tgt_labels[g], tgt_labels.new_full((neg.numel(),), self.num_classes)]))
            gt_sampled.append(gts[b][g])
            pos_mask.append(torch.arange(pos.numel() + neg.numel(), device=props.device) < pos.numel())
            positives.boxes_xyxy.append(props[pos])
            positives.labels.append(tgt_labels[g])
            positives.gt_boxes_cxcywh.append(t["boxes"].to(props)[g])
            positives.negatives_xyxy.append(props[neg])
        rois = boxes_to_rois(sampled).to(features[0].device)
        cls, roi_deltas = self.roi_forward(features, strides, rois)
        labels_all = torch.cat(labels)
        losses["loss_roi_cls"] = F.cross_entropy(cls.float(), labels_all) if labels_all.numel() else zero_loss(cls)
        is_pos = torch.cat(pos_mask)
        if is_pos.any():
            d = roi_deltas[is_pos]
            if not c.class_agnostic:
                d = d[torch.arange(d.shape[0], device=d.device), labels_all[is_pos]]
            decoded = decode_deltas(rois[is_pos, 1:], d.float(), ROI_STDS)
            giou = paired_giou(decoded, torch.cat(gt_sampled))
            losses["loss_roi_giou"] = (1 - giou).sum() / float(is_pos.sum())
        else:
            losses["loss_roi_giou"] = zero_loss(roi_deltas)
        return losses, positives


__all__ = ["RCNNHead", "RCNNHeadConfig", "RPN", "RPN_STDS", "ROI_STDS"]
