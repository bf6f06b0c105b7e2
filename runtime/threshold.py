"""The score threshold to deploy a detector with: the one of best F1 on validation data.

DETR-family scores are not calibrated probabilities (small models trained briefly top out at
0.2-0.5), so a fixed 0.5 can show nothing. Exporters store this threshold in the artifact's
manifest; the runtime uses it wherever the user gives none, and `edgedet label` picks the threshold
of its labels the same way when some ground truth is given. numpy only (torch-free runtime).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

# Without validation data: Ultralytics' and RT-DETR's default `conf`.
FALLBACK_THRESHOLD = 0.25
MATCH_IOU = 0.5


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda b: np.clip(b[..., 2:] - b[..., :2], 0, None).prod(-1)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def best_f1_threshold(detections: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                      ground_truth: Sequence[Tuple[np.ndarray, np.ndarray]]) -> Dict[str, float]:
    """Per image (boxes_xyxy [n, 4], labels [n], scores [n]) and (gt boxes_xyxy [m, 4], gt labels [m])
    -> {"threshold", "f1", "precision", "recall"} at the score that maximises F1.

    A detection is a true positive when it overlaps an unmatched ground-truth box of its class
    with IoU >= 0.5, taking detections in descending score order per image (as COCO/VOC do).
    """
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} images of detections but {len(ground_truth)} of ground truth")
    scores: List[float] = []
    hits: List[bool] = []
    n_gt = 0
    for (boxes, labels, sc), (gt_boxes, gt_labels) in zip(detections, ground_truth):
        gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
        gt_labels = np.asarray(gt_labels).reshape(-1)
        n_gt += len(gt_labels)
        taken = np.zeros(len(gt_labels), bool)
        for i in np.argsort(-np.asarray(sc), kind="stable"):
            cand = (gt_labels == labels[i]) & ~taken
            hit = False
            if cand.any():
                ious = np.where(cand, _iou(np.asarray(boxes[i], np.float64), gt_boxes), -1.0)
                j = int(ious.argmax())
                if ious[j] >= MATCH_IOU:
                    taken[j] = hit = True
            scores.append(float(sc[i]))
            hits.append(hit)
    if not scores or n_gt == 0:
        return {"threshold": FALLBACK_THRESHOLD, "f1": 0.0, "precision": 0.0, "recall": 0.0}
    order = np.argsort(-np.asarray(scores), kind="stable")
    s = np.asarray(scores)[order]
    tp = np.cumsum(np.asarray(hits)[order])
    fp = np.cumsum(~np.asarray(hits)[order])
    # Only the last detection of a run of equal scores is a reachable cut.
    last = np.r_[s[1:] != s[:-1], True]
    precision, recall = tp / (tp + fp), tp / n_gt
    f1 = np.where(last, 2 * precision * recall / np.maximum(precision + recall, 1e-9), -1.0)
    k = int(f1.argmax())
    return {"threshold": float(s[k]), "f1": float(f1[k]), "precision": float(precision[k]), "recall": float(recall[k])}


__all__ = ["best_f1_threshold", "FALLBACK_THRESHOLD"]
