"""Box deltas (Faster R-CNN parameterisation) and non-maximum suppression, in torch.

Deltas (dx, dy, dw, dh) of a target relative to a reference box, each divided by `stds`:
dx = (gx − px) / pw, dy = (gy − py) / ph, dw = log(gw / pw), dh = log(gh / ph).
Boxes are xyxy pixels.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from edgedet.nn.box_ops import box_iou

# Largest log-scale change a decoded box may get (as the reference detectors clamp).
MAX_LOG_SCALE = math.log(1000.0 / 16)


def encode_deltas(ref_xyxy: Tensor, target_xyxy: Tensor, stds: Sequence[float]) -> Tensor:
    """[N, 4] reference and target boxes -> [N, 4] normalised deltas."""
    pw, ph = ref_xyxy[:, 2] - ref_xyxy[:, 0], ref_xyxy[:, 3] - ref_xyxy[:, 1]
    px, py = ref_xyxy[:, 0] + 0.5 * pw, ref_xyxy[:, 1] + 0.5 * ph
    gw, gh = target_xyxy[:, 2] - target_xyxy[:, 0], target_xyxy[:, 3] - target_xyxy[:, 1]
    gx, gy = target_xyxy[:, 0] + 0.5 * gw, target_xyxy[:, 1] + 0.5 * gh
    deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], -1)
    return deltas / deltas.new_tensor(stds)


def decode_deltas(ref_xyxy: Tensor, deltas: Tensor, stds: Sequence[float]) -> Tensor:
    """[N, 4] reference boxes + [N, 4] normalised deltas -> [N, 4] xyxy boxes."""
    d = deltas * deltas.new_tensor(stds)
    pw, ph = ref_xyxy[:, 2] - ref_xyxy[:, 0], ref_xyxy[:, 3] - ref_xyxy[:, 1]
    px, py = ref_xyxy[:, 0] + 0.5 * pw, ref_xyxy[:, 1] + 0.5 * ph
    cx, cy = px + d[:, 0] * pw, py + d[:, 1] * ph
    w = pw * d[:, 2].clamp(max=MAX_LOG_SCALE).exp()
    h = ph * d[:, 3].clamp(max=MAX_LOG_SCALE).exp()
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def clip_boxes(boxes_xyxy: Tensor, image_hw: Tensor) -> Tensor:
    """Clip [N, 4] xyxy boxes to the image (h, w)."""
    h, w = image_hw[0].to(boxes_xyxy), image_hw[1].to(boxes_xyxy)
    x = boxes_xyxy[:, 0::2].clamp(min=0).minimum(w)
    y = boxes_xyxy[:, 1::2].clamp(min=0).minimum(h)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], -1)


def nms(boxes_xyxy: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS: indices [K] int64 of kept boxes, by descending score.

    The IoU matrix is computed in torch; the greedy pass runs over a boolean matrix in numpy
    (one row per kept box), which is fast for the few thousand boxes of a proposal stage.
    """
    if boxes_xyxy.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes_xyxy.device)
    order = scores.argsort(descending=True)
    b = boxes_xyxy[order].float()
    suppress = (box_iou(b, b)[0] > iou_threshold).cpu().numpy()
    removed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(i)
        removed |= suppress[i]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]


def batched_nms(boxes_xyxy: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group (e.g. pyramid level): boxes of different groups never suppress each other.

    Returns kept indices [K] int64 by descending score. Runs group by group, so the IoU matrix is
    never larger than the biggest group's.
    """
    keep = [torch.empty(0, dtype=torch.int64, device=boxes_xyxy.device)]
    for g in torch.unique(groups).tolist():
        idx = torch.nonzero(groups == g).flatten()
        keep.append(idx[nms(boxes_xyxy[idx], scores[idx], iou_threshold)])
    kept = torch.cat(keep)
    return kept[scores[kept].argsort(descending=True)]


__all__ = ["encode_deltas", "decode_deltas", "clip_boxes", "nms", "batched_nms", "MAX_LOG_SCALE"]
