"""Data types shared by the runtime, the training stack's evaluation and the converters.

numpy only: this module is imported on edge devices that have no torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Detections of one image, boxes in that image's pixels.

    boxes_xyxy [N, 4] float32 (x0, y0, x1, y1); scores [N] float32; labels [N] int64
    (indices into `class_names`); image_size (H, W); timings_ms per stage; track_ids [N] int64
    (a stable identity per object, set by a tracker; None when not tracked).
    """

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: Tuple[str, ...] = ()
    image_size: Tuple[int, int] = (0, 0)
    timings_ms: Dict[str, float] = field(default_factory=dict)
    track_ids: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not (len(boxes) == len(scores) == len(labels)):
            raise ValueError(f"Detections: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels must agree")
        object.__setattr__(self, "boxes_xyxy", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.track_ids is not None:
            ids = np.asarray(self.track_ids, dtype=np.int64).reshape(-1)
            if len(ids) != len(scores):
                raise ValueError(f"Detections: {len(ids)} track_ids for {len(scores)} detections")
            object.__setattr__(self, "track_ids", ids)

    @classmethod
    def empty(cls, class_names: Sequence[str] = (), image_size: Tuple[int, int] = (0, 0)) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), tuple(class_names), image_size)

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def names(self) -> List[str]:
        """Class name of each detection (the label number as text when no names are known)."""
        n = len(self.class_names)
        return [self.class_names[i] if 0 <= i < n else str(i) for i in self.labels.tolist()]

    def filter(self, min_score: Optional[float] = None, classes: Optional[Iterable[int]] = None) -> "Detections":
        keep = np.ones(len(self), dtype=bool)
        if min_score is not None:
            keep &= self.scores >= min_score
        if classes is not None:
            keep &= np.isin(self.labels, np.asarray(list(classes), dtype=np.int64))
        return self.select(keep)

    def suppress_duplicates(self, iou: float = 0.7) -> "Detections":
        """Drop a box that overlaps a higher-scoring box of its class by more than `iou` (class-wise NMS,
        OpenCV's). DETRs are NMS-free by design, but a small or briefly trained one may still put two
        queries on one object; a high `iou` removes those copies and keeps neighbouring objects apart."""
        if len(self) < 2:
            return self
        import cv2

        xywh = np.concatenate([self.boxes_xyxy[:, :2], self.boxes_xyxy[:, 2:] - self.boxes_xyxy[:, :2]], axis=1)
        keep = cv2.dnn.NMSBoxesBatched(xywh.astype(np.float32).tolist(), self.scores.astype(np.float32).tolist(),
                                       self.labels.astype(np.int32).tolist(), float(self.scores.min()) - 1.0, float(iou))
        index = np.sort(np.asarray(keep, dtype=np.int64).reshape(-1))  # keep the score order
        return self.select(index)

    def select(self, index: np.ndarray) -> "Detections":
        ids = None if self.track_ids is None else self.track_ids[index]
        return replace(self, boxes_xyxy=self.boxes_xyxy[index], scores=self.scores[index], labels=self.labels[index], track_ids=ids)

    def to_dict(self) -> Dict[str, object]:
        dets = [{"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 4), "label": int(l), "name": n}
                for b, s, l, n in zip(self.boxes_xyxy, self.scores, self.labels, self.names)]
        if self.track_ids is not None:
            for d, t in zip(dets, self.track_ids.tolist()):
                d["track_id"] = int(t)
        return {
            "image_size": list(self.image_size),
            "detections": dets,
            "timings_ms": {k: round(float(v), 3) for k, v in self.timings_ms.items()},
        }

    def to_coco(self, image_id: int, category_ids: Optional[Sequence[int]] = None) -> List[Dict[str, object]]:
        """COCO result records (bbox as x, y, w, h); `category_ids[label]` maps labels to COCO ids."""
        out = []
        for b, s, l in zip(self.boxes_xyxy, self.scores, self.labels):
            cat = int(category_ids[l]) if category_ids is not None else int(l)
            x0, y0, x1, y1 = (float(v) for v in b)
            out.append({"image_id": int(image_id), "category_id": cat, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(s)})
        return out
