"""Hungarian matching between a detector's queries and each image's ground-truth boxes."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from edgedet.losses.focal import focal_class_cost
from edgedet.nn.box_ops import box_cxcywh_to_xyxy, generalized_box_iou


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimising cost_class·C + cost_bbox·L1 + cost_giou·(−GIoU).

    Class cost: −softmax probability of the target class (`focal=False`, last logit = no-object)
    or the focal cost (`focal=True`, sigmoid logits). Boxes are normalised cxcywh.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 focal: bool = False, focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: at least one of cost_class, cost_bbox, cost_giou must be non-zero")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.focal, self.focal_alpha, self.focal_gamma = focal, focal_alpha, focal_gamma

    def cost_matrix(self, logits: Tensor, boxes_cxcywh: Tensor, tgt_ids: Tensor, tgt_boxes_cxcywh: Tensor) -> Tensor:
        """Pairwise cost [N, M] of N predictions (logits [N, C], boxes [N, 4]) against M targets."""
        if self.focal:
            c_class = focal_class_cost(logits, tgt_ids, self.focal_alpha, self.focal_gamma)
        else:
            # The constant 1 of "1 − p" does not change the assignment, so −p suffices.
            c_class = -logits.softmax(-1)[:, tgt_ids]
        c_bbox = torch.cdist(boxes_cxcywh, tgt_boxes_cxcywh, p=1)
        c_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes_cxcywh), box_cxcywh_to_xyxy(tgt_boxes_cxcywh))
        return self.cost_bbox * c_bbox + self.cost_class * c_class + self.cost_giou * c_giou

    @torch.no_grad()
    def forward(self, outputs: Dict[str, Tensor], targets: Sequence[Dict[str, Tensor]]) -> List[Tuple[Tensor, Tensor]]:
        """outputs: pred_logits [B, Q, C], pred_boxes [B, Q, 4] cxcywh; targets: per image labels [n], boxes [n, 4].

        Returns per image (pred_idx, tgt_idx), int64 tensors of length min(Q, n); both empty
        for an image without targets.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        bs, nq = logits.shape[:2]
        sizes = [len(t["boxes"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in range(bs)]
        tgt_ids = torch.cat([t["labels"] for t in targets]).to(logits.device)
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(boxes)
        # One batched cost matrix, then split per image: far fewer kernel launches than a loop.
        cost = self.cost_matrix(logits.flatten(0, 1).float(), boxes.flatten(0, 1).float(), tgt_ids, tgt_boxes.float())
        cost = cost.view(bs, nq, -1).cpu()
        if not torch.isfinite(cost).all():
            raise ValueError("non-finite matching cost: the model output NaN/inf logits or boxes; "
                             "lower train.lr or check the inputs")
        indices = []
        for i, c in enumerate(cost.split(sizes, -1)):
            if sizes[i] == 0:
                indices.append((empty, empty))
                continue
            row, col = linear_sum_assignment(c[i].numpy())
            indices.append((torch.as_tensor(row, dtype=torch.int64), torch.as_tensor(col, dtype=torch.int64)))
        return indices


__all__ = ["HungarianMatcher"]
