"""ByteTrack (Zhang et al., 2022): two-stage association of high- and low-score detections.

Each frame: Kalman-predict every live track; match confirmed and lost tracks to high-score
detections by IoU; match tracks still unmatched to low-score detections (occluded or blurred
objects keep their identity instead of being dropped); confirm new tracks on their second
hit; start tracks from unmatched confident detections; forget tracks lost for `track_buffer`
frames. Assignment is optimal (LAPJV from `lap`, else scipy's linear_sum_assignment).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

import numpy as np

from runtime.track.kalman import KalmanBoxFilter, xyah_to_xyxy, xyxy_to_xyah
from runtime.types import Detections


def linear_assignment(cost: np.ndarray, thresh: float) -> Tuple[List[Tuple[int, int]], List[int], List[int]]:
    """Minimum-cost matching keeping pairs with cost <= thresh -> (matches, unmatched rows, unmatched cols)."""
    if cost.size == 0:
        return [], list(range(cost.shape[0])), list(range(cost.shape[1]))
    try:
        import lap

        _, x, _ = lap.lapjv(cost, extend_cost=True, cost_limit=thresh)
        matches = [(i, int(j)) for i, j in enumerate(x) if j >= 0]
    except ImportError:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(cost)
        matches = [(int(i), int(j)) for i, j in zip(rows, cols) if cost[i, j] <= thresh]
    mr, mc = {i for i, _ in matches}, {j for _, j in matches}
    return matches, [i for i in range(cost.shape[0]) if i not in mr], [j for j in range(cost.shape[1]) if j not in mc]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


@dataclass
class TrackerConfig:
    high_thresh: float = 0.5  # first association; detections below go to the second
    low_thresh: float = 0.1  # below this a detection is ignored
    new_track_thresh: float = 0.6  # an unmatched detection starts a track at or above this
    match_thresh: float = 0.8  # max cost (1 - IoU x score, or 1 - IoU without fuse_score) of a first-stage match
    fuse_score: bool = True  # weigh IoU by the score in the first stage (off for detectors with low scores)
    low_match_thresh: float = 0.5  # max cost (1 - IoU) of a second-stage match
    unconfirmed_match_thresh: float = 0.7
    track_buffer: int = 30  # frames a lost track is kept for re-identification
    per_class: bool = False  # True: only same-class detections continue a track


class _Track:
    _kf = KalmanBoxFilter()

    def __init__(self, box: np.ndarray, score: float, label: int, frame: int):
        self.mean, self.cov = self._kf.initiate(xyxy_to_xyah(box))
        self.box, self.score, self.label = box, score, label
        self.id = 0
        self.confirmed = False
        self.lost = False
        self.last_frame = frame
        self.start_frame = frame

    def predict(self) -> None:
        mean = self.mean.copy()
        if self.lost:
            mean[7] = 0  # a lost track keeps moving but stops growing
        self.mean, self.cov = self._kf.predict(mean, self.cov)

    @property
    def predicted_box(self) -> np.ndarray:
        return xyah_to_xyxy(self.mean)

    def update(self, box: np.ndarray, score: float, label: int, frame: int) -> None:
        self.mean, self.cov = self._kf.update(self.mean, self.cov, xyxy_to_xyah(box))
        self.box, self.score, self.label = box, score, label
        self.last_frame, self.lost = frame, False


def tracker_config(threshold: float, high: Optional[float] = None, new: Optional[float] = None,
                   low: Optional[float] = None, **rest) -> TrackerConfig:
    """ByteTrack thresholds derived from the score threshold in use: a detection that `predict` draws starts
    (and continues) a track; the second stage looks down to a tenth, capped at the threshold itself."""
    high = threshold if high is None else high
    cfg = TrackerConfig(high_thresh=high, new_track_thresh=high if new is None else new,
                        low_thresh=min(0.1, high) if low is None else low, **rest)
    if not cfg.low_thresh <= cfg.high_thresh:
        raise ValueError(f"--track-low {cfg.low_thresh} is above the first-stage threshold {cfg.high_thresh}; lower it")
    return cfg


class ByteTracker:
    """tracker.update(detections) -> the same frame's tracked Detections, each with a stable track_id.

    Detections below `low_thresh` are ignored; returned are the confirmed tracks matched in this
    frame (boxes are the detections', scores and labels too). Call `reset()` between videos.
    """

    def __init__(self, config: Optional[TrackerConfig] = None, **overrides):
        self.config = replace(config or TrackerConfig(), **overrides)
        self.reset()

    def reset(self) -> None:
        self.tracks: List[_Track] = []  # confirmed and unconfirmed, tracked and lost
        self.frame = 0
        self._next_id = 1

    def _cost(self, tracks: List[_Track], boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, fuse: bool) -> np.ndarray:
        iou = iou_matrix(np.array([t.predicted_box for t in tracks]).reshape(-1, 4), boxes)
        cost = 1 - (iou * scores[None] if fuse and self.config.fuse_score else iou)
        if self.config.per_class and cost.size:
            cost[np.array([t.label for t in tracks])[:, None] != labels[None]] = 1e6
        return cost

    def update(self, dets: Detections) -> Detections:
        cfg = self.config
        self.frame += 1
        boxes, scores, labels = dets.boxes_xyxy.astype(np.float64), dets.scores, dets.labels
        high = np.where(scores >= cfg.high_thresh)[0]
        low = np.where((scores >= cfg.low_thresh) & (scores < cfg.high_thresh))[0]
        for t in self.tracks:
            t.predict()
        pool = [t for t in self.tracks if t.confirmed]
        unconfirmed = [t for t in self.tracks if not t.confirmed]
        out_index: List[Tuple[_Track, int]] = []

        # 1. confirmed tracks (tracked and lost) vs confident detections
        m, um_tracks, um_high = linear_assignment(self._cost(pool, boxes[high], scores[high], labels[high], True), cfg.match_thresh)
        for ti, di in m:
            pool[ti].update(boxes[high[di]], float(scores[high[di]]), int(labels[high[di]]), self.frame)
            out_index.append((pool[ti], high[di]))
        # 2. tracks that were tracked until now vs the low-score detections
        rest = [pool[i] for i in um_tracks if not pool[i].lost]
        m, um_rest, _ = linear_assignment(self._cost(rest, boxes[low], scores[low], labels[low], False), cfg.low_match_thresh)
        for ti, di in m:
            rest[ti].update(boxes[low[di]], float(scores[low[di]]), int(labels[low[di]]), self.frame)
            out_index.append((rest[ti], low[di]))
        for i in um_rest:
            rest[i].lost = True
        # 3. tentative tracks vs the confident detections left; unmatched ones die
        left = high[um_high]
        m, um_unc, um_left = linear_assignment(self._cost(unconfirmed, boxes[left], scores[left], labels[left], True),
                                               cfg.unconfirmed_match_thresh)
        for ti, di in m:
            t = unconfirmed[ti]
            t.update(boxes[left[di]], float(scores[left[di]]), int(labels[left[di]]), self.frame)
            t.confirmed, t.id = True, self._next_id
            self._next_id += 1
            out_index.append((t, left[di]))
        dead = {id(unconfirmed[i]) for i in um_unc}
        # 4. new tracks; on the first frame they are confirmed at once (nothing to confirm against)
        for di in left[um_left]:
            if scores[di] < cfg.new_track_thresh:
                continue
            t = _Track(boxes[di], float(scores[di]), int(labels[di]), self.frame)
            if self.frame == 1:
                t.confirmed, t.id = True, self._next_id
                self._next_id += 1
                out_index.append((t, di))
            self.tracks.append(t)
        self.tracks = [t for t in self.tracks if id(t) not in dead and self.frame - t.last_frame <= cfg.track_buffer]
        if not out_index:
            return replace(dets.select(np.zeros(0, np.int64)), track_ids=np.zeros(0, np.int64))
        out_index.sort(key=lambda p: p[0].id)
        picked = dets.select(np.array([di for _, di in out_index], np.int64))
        return replace(picked, track_ids=np.array([t.id for t, _ in out_index], np.int64))


__all__ = ["ByteTracker", "TrackerConfig", "tracker_config", "linear_assignment", "iou_matrix"]
