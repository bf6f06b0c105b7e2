"""Box conversions and overlap measures.

Formats: `cxcywh` = (centre x, centre y, width, height); `xyxy` = (x0, y0, x1, y1).
All functions work on any leading shape [..., 4] unless stated otherwise and keep gradients.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] cxcywh -> [..., 4] xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """[..., 4] xyxy -> [..., 4] cxcywh."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def box_area(boxes_xyxy: Tensor) -> Tensor:
    """[..., 4] xyxy -> [...] area."""
    return (boxes_xyxy[..., 2] - boxes_xyxy[..., 0]) * (boxes_xyxy[..., 3] - boxes_xyxy[..., 1])


def box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tuple[Tensor, Tensor]:
    """Pairwise IoU of [N, 4] and [M, 4] xyxy boxes -> (iou [N, M], union [N, M])."""
    area1 = box_area(boxes1_xyxy)
    area2 = box_area(boxes2_xyxy)
    lt = torch.max(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])
    rb = torch.min(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union, union


def generalized_box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """Pairwise generalised IoU (Rezatofighi et al. 2019) of [N, 4] and [M, 4] xyxy -> [N, M].

    Degenerate boxes (x1 < x0) give wrong answers, so they are rejected early.
    """
    if not (boxes1_xyxy[:, 2:] >= boxes1_xyxy[:, :2]).all() or not (boxes2_xyxy[:, 2:] >= boxes2_xyxy[:, :2]).all():
        raise ValueError("generalized_box_iou needs xyxy boxes with x1 >= x0 and y1 >= y0")
    iou, union = box_iou(boxes1_xyxy, boxes2_xyxy)
    lt = torch.min(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])
    rb = torch.max(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """log(x / (1 - x)) with x clamped to [eps, 1 - eps] (the reference repos differ in eps)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
