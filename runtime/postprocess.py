"""Engine outputs -> `Detections` in original-image pixels.

Two output layouts, chosen by `manifest.outputs.postprocess`:
- postprocessed graphs: labels [B, K] int, boxes [B, K, 4] xyxy in network-input pixels, scores [B, K];
- raw DETR heads: pred_logits [B, Q, C], pred_boxes [B, Q, 4] cxcywh normalised to the network
  input (H, W); scored by softmax (last column = no-object) or sigmoid top-k over queries x classes.
Then boxes are mapped back through the letterbox/stretch, clipped, and filtered by score and class.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from runtime.manifest import OutputSpec
from runtime.preprocess import LetterboxInfo
from runtime.types import Detections


def boxes_cxcywh_to_xyxy(boxes_cxcywh: np.ndarray) -> np.ndarray:
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x0, y0, x1, y1)."""
    cx, cy, w, h = np.moveaxis(np.asarray(boxes_cxcywh, np.float32), -1, 0)
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float32)))).astype(np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def decode_raw(pred_logits: np.ndarray, pred_boxes_cxcywh: np.ndarray, size_hw: Tuple[int, int],
               score_activation: str, top_k: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw heads of one image -> (scores [K], labels [K], boxes_xyxy [K, 4] network pixels), best first.

    pred_logits [Q, C] (C includes the no-object column for softmax); pred_boxes_cxcywh [Q, 4] in [0, 1].
    """
    h, w = size_hw
    boxes_xyxy = boxes_cxcywh_to_xyxy(pred_boxes_cxcywh) * np.array([w, h, w, h], np.float32)
    if score_activation == "softmax":
        prob = _softmax(pred_logits)[:, :-1]
        labels = prob.argmax(axis=1)
        scores = prob[np.arange(len(prob)), labels]
        order = np.argsort(-scores, kind="stable")[:top_k]
        return scores[order], labels[order], boxes_xyxy[order]
    if score_activation == "sigmoid":
        prob = _sigmoid(pred_logits).reshape(-1)
        num_classes = pred_logits.shape[1]
        k = min(top_k, prob.size)
        top = np.argpartition(-prob, k - 1)[:k] if k < prob.size else np.arange(prob.size)
        top = top[np.argsort(-prob[top], kind="stable")]
        return prob[top], top % num_classes, boxes_xyxy[top // num_classes]
    raise ValueError(f"unknown score_activation '{score_activation}'; valid: softmax, sigmoid")


def checked_dedup_iou(dedup_iou: Optional[float]) -> Optional[float]:
    if dedup_iou is not None and not 0.0 < float(dedup_iou) <= 1.0:
        raise ValueError(f"dedup_iou must be in (0, 1] (0.7 drops only near-copies), got {dedup_iou}")
    return None if dedup_iou is None else float(dedup_iou)


class Postprocessor:
    """Turns one batch of outputs into a list of Detections (one per image)."""

    def __init__(self, spec: OutputSpec, size_hw: Tuple[int, int], class_names: Sequence[str] = (),
                 conf: float = 0.25, classes: Optional[Iterable[int]] = None, dedup_iou: Optional[float] = None,
                 boxes_in_valid_region: bool = False):
        """boxes_in_valid_region: raw pred_boxes are normalised to each image's valid region (the letterboxed
        image, `LetterboxInfo.valid_hw`) rather than the whole input: models fed a `valid_hw` input."""
        self.dedup_iou = checked_dedup_iou(dedup_iou)
        self.boxes_in_valid_region = bool(boxes_in_valid_region)
        self.spec = spec
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        self.class_names = tuple(class_names)
        self.conf = float(conf)
        self.classes = None if classes is None else np.asarray(sorted(set(int(c) for c in classes)), np.int64)
        names = list(spec.names)
        expected = 3 if spec.postprocess else 2
        if len(names) != expected:
            raise ValueError(f"outputs.names must list {expected} outputs "
                             f"({'labels, boxes, scores' if spec.postprocess else 'pred_logits, pred_boxes'}), got {names}")
        self.names = names

    def _pick(self, outputs: Dict[str, np.ndarray]) -> List[np.ndarray]:
        missing = [n for n in self.names if n not in outputs]
        if missing:
            raise KeyError(f"engine outputs {sorted(outputs)} lack {missing} named in the manifest (outputs.names)")
        return [np.asarray(outputs[n]) for n in self.names]

    def __call__(self, outputs: Dict[str, np.ndarray], infos: Sequence[LetterboxInfo]) -> List[Detections]:
        """outputs: engine outputs of a batch of len(infos) images -> one Detections per image."""
        arrays = self._pick(outputs)
        if any(a.shape[0] < len(infos) for a in arrays):
            raise ValueError(f"outputs have batch {[a.shape[0] for a in arrays]} but {len(infos)} images were fed")
        results = []
        for i, info in enumerate(infos):
            if self.spec.postprocess:
                labels, boxes, scores = arrays[0][i], arrays[1][i], arrays[2][i]
                labels = labels.astype(np.int64).reshape(-1)
                scores = scores.astype(np.float32).reshape(-1)
                order = np.argsort(-scores, kind="stable")[: self.spec.top_k]
                scores, labels, boxes = scores[order], labels[order], boxes.reshape(-1, 4)[order]
            else:
                hw = info.valid_hw if self.boxes_in_valid_region and info.valid_hw is not None else self.size_hw
                scores, labels, boxes = decode_raw(arrays[0][i], arrays[1][i], hw, self.spec.score_activation, self.spec.top_k)
            results.append(self._finish(scores, labels, boxes, info))
        return results

    def _finish(self, scores: np.ndarray, labels: np.ndarray, boxes_xyxy_net: np.ndarray, info: LetterboxInfo) -> Detections:
        keep = scores >= self.conf
        if self.classes is not None:
            keep &= np.isin(labels, self.classes)
        boxes = info.to_original(boxes_xyxy_net[keep])
        dets = Detections(boxes, scores[keep], labels[keep], self.class_names, tuple(info.orig_size))
        return dets if self.dedup_iou is None else dets.suppress_duplicates(self.dedup_iou)
