"""Counting tracked objects: a line they cross (in / out) and polygon zones they are in.

Both work on tracked `Detections` (track_ids set) and an anchor point per box: "center" or
"bottom_center" (where a car or a person touches the ground, the usual choice for a camera
looking down on a road). Drawn by `draw_line` / `draw_zone`.
"""
from __future__ import annotations

from collections import defaultdict, deque
from typing import Deque, Dict, List, Sequence, Tuple

import cv2
import numpy as np

from runtime.draw import class_color, draw, draw_style
from runtime.types import Detections

Point = Tuple[float, float]


def anchors(dets: Detections, anchor: str = "bottom_center") -> np.ndarray:
    b = dets.boxes_xyxy
    if anchor == "center":
        return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)
    if anchor == "bottom_center":
        return np.stack([(b[:, 0] + b[:, 2]) / 2, b[:, 3]], 1)
    raise ValueError(f"unknown anchor '{anchor}'; valid: center, bottom_center")


class LineCounter:
    """Counts tracks whose anchor crosses the segment start -> end.

    `in` = crossing from the segment's left to its right (seen from start looking at end), `out` the
    other way. Each change of side of a track's anchor counts once (back and forth = one in, one out);
    an anchor exactly on the line or beside the segment's ends changes nothing. `update(dets)` ->
    (track ids that went in, track ids that went out) this frame.
    """

    def __init__(self, start: Point, end: Point, anchor: str = "bottom_center"):
        self.start, self.end = np.asarray(start, np.float64), np.asarray(end, np.float64)
        if np.allclose(self.start, self.end):
            raise ValueError("a counting line needs two different points")
        self.anchor = anchor
        self.in_count = self.out_count = 0
        self.in_by_class: Dict[str, int] = defaultdict(int)
        self.out_by_class: Dict[str, int] = defaultdict(int)
        self._side: Dict[int, int] = {}

    def _side_of(self, p: np.ndarray) -> np.ndarray:
        d = self.end - self.start
        return np.sign(d[0] * (p[:, 1] - self.start[1]) - d[1] * (p[:, 0] - self.start[0]))

    def _within(self, p: np.ndarray) -> np.ndarray:
        """Anchor projects onto the segment (not past its ends)."""
        d = self.end - self.start
        t = ((p - self.start) @ d) / (d @ d)
        return (t >= 0) & (t <= 1)

    def update(self, dets: Detections) -> Tuple[List[int], List[int]]:
        if dets.track_ids is None:
            raise ValueError("LineCounter needs tracked detections (track_ids); run them through a ByteTracker first")
        pts = anchors(dets, self.anchor)
        sides, within = self._side_of(pts), self._within(pts)
        went_in, went_out = [], []
        for tid, side, ok, name in zip(dets.track_ids.tolist(), sides.tolist(), within.tolist(), dets.names):
            if side == 0:
                continue
            prev = self._side.get(tid)
            if prev is not None and prev != side and ok:
                if side > 0:
                    self.in_count += 1
                    self.in_by_class[name] += 1
                    went_in.append(tid)
                else:
                    self.out_count += 1
                    self.out_by_class[name] += 1
                    went_out.append(tid)
            if ok or prev is None:
                self._side[tid] = int(side)
        return went_in, went_out


class PolygonZone:
    """Which tracked objects are inside a polygon now, and how many distinct ones have entered."""

    def __init__(self, polygon: Sequence[Point], anchor: str = "bottom_center"):
        self.polygon = np.asarray(polygon, np.float32).reshape(-1, 2)
        if len(self.polygon) < 3:
            raise ValueError(f"a zone needs at least 3 points, got {len(self.polygon)}")
        self.anchor = anchor
        self.current_count = 0
        self.seen: set = set()

    def contains(self, dets: Detections) -> np.ndarray:
        pts = anchors(dets, self.anchor)
        return np.array([cv2.pointPolygonTest(self.polygon, (float(x), float(y)), False) >= 0 for x, y in pts], bool)

    def update(self, dets: Detections) -> np.ndarray:
        inside = self.contains(dets)
        self.current_count = int(inside.sum())
        if dets.track_ids is not None:
            self.seen.update(dets.track_ids[inside].tolist())
        return inside

    @property
    def total_count(self) -> int:
        return len(self.seen)


class Trails:
    """The last `length` anchor points of each track, for drawing."""

    def __init__(self, length: int = 30, anchor: str = "center"):
        self.length, self.anchor = length, anchor
        self.points: Dict[int, Deque[Tuple[int, int]]] = {}

    def update(self, dets: Detections) -> None:
        if dets.track_ids is None:
            return
        live = set(dets.track_ids.tolist())
        for tid, (x, y) in zip(dets.track_ids.tolist(), anchors(dets, self.anchor).tolist()):
            self.points.setdefault(tid, deque(maxlen=self.length)).append((int(round(x)), int(round(y))))
        for tid in [t for t in self.points if t not in live]:
            del self.points[tid]


def draw_tracks(frame: np.ndarray, dets: Detections, trails: "Trails" = None, copy: bool = True) -> np.ndarray:
    """Boxes coloured by track id, labelled '#id name score' (placed as `runtime.draw.draw` places labels:
    never over each other), with each track's trail; line widths scale with the frame."""
    out = draw(frame, dets, copy=copy, color_by_track=True)
    if trails is not None:
        line = draw_style(*out.shape[:2])[0]
        ids = dets.track_ids if dets.track_ids is not None else np.full(len(dets), -1)
        for tid in ids.tolist():
            if tid in trails.points and len(trails.points[tid]) > 1:
                cv2.polylines(out, [np.array(trails.points[tid], np.int32)], False, class_color(tid), line, cv2.LINE_AA)
    return out


def draw_line(frame: np.ndarray, line: LineCounter, color=(0, 255, 255)) -> np.ndarray:
    p0, p1 = tuple(int(v) for v in line.start), tuple(int(v) for v in line.end)
    width, scale, stroke = draw_style(*frame.shape[:2])
    cv2.line(frame, p0, p1, color, width, cv2.LINE_AA)
    text = f"in {line.in_count}  out {line.out_count}"
    org = (min(p0[0], p1[0]) + 5, max(int(40 * scale), min(p0[1], p1[1]) - 8))
    cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, 1.4 * scale, (0, 0, 0), 2 * (stroke + 1), cv2.LINE_AA)
    cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, 1.4 * scale, color, stroke + 1, cv2.LINE_AA)
    return frame


def draw_zone(frame: np.ndarray, zone: PolygonZone, color=(255, 128, 0), alpha: float = 0.25) -> np.ndarray:
    poly = zone.polygon.round().astype(np.int32)
    overlay = frame.copy()
    cv2.fillPoly(overlay, [poly], color)
    cv2.addWeighted(overlay, alpha, frame, 1 - alpha, 0, dst=frame)
    width, scale, stroke = draw_style(*frame.shape[:2])
    cv2.polylines(frame, [poly], True, color, width, cv2.LINE_AA)
    x, y = poly.min(0)
    text = f"in zone {zone.current_count} (total {zone.total_count})"
    org = (int(x) + 5, int(y) + int(44 * scale))
    cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, 1.2 * scale, (0, 0, 0), 2 * (stroke + 1), cv2.LINE_AA)
    cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, 1.2 * scale, (255, 255, 255), stroke + 1, cv2.LINE_AA)
    return frame


__all__ = ["LineCounter", "PolygonZone", "Trails", "anchors", "draw_tracks", "draw_line", "draw_zone"]
