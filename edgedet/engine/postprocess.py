"""Model outputs -> per-image `runtime.types.Detections` in original-image pixels."""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import Tensor

from edgedet.nn.box_ops import box_cxcywh_to_xyxy
from runtime.types import Detections

SCORE_ACTIVATIONS = ("softmax", "sigmoid")


@torch.no_grad()
def to_detections(outputs: Dict[str, Tensor], orig_sizes: Tensor, score_activation: str, top_k: int = 100,
                  class_names: Sequence[str] = (), clip: bool = False) -> List[Detections]:
    """outputs: pred_logits [B, Q, C'] and pred_boxes [B, Q, 4] normalised cxcywh; orig_sizes [B, 2] (H, W).

    softmax: C' = C + 1, the last (no-object) column is dropped and each query keeps its best class.
    sigmoid: the top_k (query, class) pairs over Q×C are kept, so one query may give several labels.
    Detections are sorted by descending score, at most `top_k` per image.
    clip: boxes clipped to the image, as the deployed runtime does (the official postprocessors do not).
    """
    if score_activation not in SCORE_ACTIVATIONS:
        raise ValueError(f"unknown score_activation '{score_activation}'. Valid: {', '.join(SCORE_ACTIVATIONS)}")
    logits = outputs["pred_logits"].float()
    boxes = box_cxcywh_to_xyxy(outputs["pred_boxes"].float())
    if orig_sizes.shape != (logits.shape[0], 2):
        raise ValueError(f"orig_sizes must be [B, 2] (H, W) with B = {logits.shape[0]}, got {tuple(orig_sizes.shape)}")
    bs, nq, _ = logits.shape
    if score_activation == "softmax":
        scores, labels = logits.softmax(-1)[..., :-1].max(-1)
        k = min(top_k, nq)
        scores, query = scores.topk(k, dim=1)
        labels = labels.gather(1, query)
    else:
        prob = logits.sigmoid().flatten(1)
        k = min(top_k, prob.shape[1])
        scores, flat = prob.topk(k, dim=1)
        num_classes = logits.shape[-1]
        query, labels = flat // num_classes, flat % num_classes
    boxes = boxes.gather(1, query.unsqueeze(-1).expand(-1, -1, 4))
    h, w = orig_sizes.to(boxes).unbind(1)
    scale = torch.stack((w, h, w, h), dim=1)[:, None, :]
    boxes = boxes * scale
    if clip:
        boxes = torch.minimum(boxes.clamp(min=0), scale)
    out = []
    for i in range(bs):
        size = (int(orig_sizes[i, 0]), int(orig_sizes[i, 1]))
        out.append(Detections(boxes[i].cpu().numpy(), scores[i].cpu().numpy(), labels[i].cpu().numpy(),
                              tuple(class_names), size))
    return out


__all__ = ["to_detections", "SCORE_ACTIVATIONS"]
