"""Drawing detections on BGR frames: boxes, labels, scores, a colour per class, an FPS overlay, contact sheets."""
from __future__ import annotations

import colorsys
import math
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from runtime.types import Detections

Color = Tuple[int, int, int]


def class_color(label: int) -> Color:
    """A stable, well-separated BGR colour for a class id (golden-ratio hue steps)."""
    hue = (int(label) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw(frame: np.ndarray, detections: Detections, thickness: int = 2, font_scale: float = 0.5, show_scores: bool = True,
         colors: Optional[Sequence[Color]] = None, copy: bool = True) -> np.ndarray:
    """Draw boxes_xyxy (frame pixels) with "name score" labels; returns the frame (a copy unless copy=False).

    colors: BGR colour per class id (default `class_color`).
    """
    out = frame.copy() if copy else frame
    h, w = out.shape[:2]
    for box, score, label, name in zip(detections.boxes_xyxy, detections.scores, detections.labels, detections.names):
        color = tuple(int(c) for c in colors[label]) if colors is not None else class_color(int(label))
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thickness)
        text = f"{name} {score:.2f}" if show_scores else name
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y0 - 2 if y0 - th - base - 2 >= 0 else min(h - base, y0 + th + 2)  # inside the box when at the top edge
        tx = max(0, min(x0, w - tw))
        cv2.rectangle(out, (tx, ty - th - base), (tx + tw, ty + base // 2), color, -1)
        cv2.putText(out, text, (tx, ty - base // 2), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def draw_fps(frame: np.ndarray, fps: float, latency_ms: Optional[float] = None, origin: Tuple[int, int] = (8, 24)) -> np.ndarray:
    """Write "FPS 29.8 | 33.1 ms" at the top-left of `frame` in place; returns it."""
    text = f"FPS {fps:.1f}" + (f" | {latency_ms:.1f} ms" if latency_ms is not None else "")
    cv2.putText(frame, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(frame, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    return frame


def contact_sheet(frames: Sequence[np.ndarray], cols: int = 4, cell_size: Optional[Tuple[int, int]] = None,
                  gap: int = 4, background: Color = (32, 32, 32)) -> np.ndarray:
    """Tile BGR frames into one image, `cols` per row, each resized (keeping its ratio) into a cell.

    cell_size (H, W) defaults to the first frame's size. Returns uint8 [rows*(H+gap)+gap, cols*(W+gap)+gap, 3].
    """
    if not frames:
        raise ValueError("contact_sheet needs at least one frame")
    cols = max(1, min(int(cols), len(frames)))
    rows = math.ceil(len(frames) / cols)
    ch, cw = cell_size or frames[0].shape[:2]
    sheet = np.full((rows * (ch + gap) + gap, cols * (cw + gap) + gap, 3), background, np.uint8)
    for i, frame in enumerate(frames):
        img = frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        s = min(ch / img.shape[0], cw / img.shape[1])
        nh, nw = max(1, int(round(img.shape[0] * s))), max(1, int(round(img.shape[1] * s)))
        y = gap + (i // cols) * (ch + gap) + (ch - nh) // 2
        x = gap + (i % cols) * (cw + gap) + (cw - nw) // 2
        sheet[y:y + nh, x:x + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return sheet
