"""Drawing detections on BGR frames: boxes, labels, scores, a colour per class, an FPS overlay, contact sheets."""
from __future__ import annotations

import colorsys
import math
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from runtime.types import Detections

Color = Tuple[int, int, int]


def class_color(label: int) -> Color:
    """A stable, well-separated BGR colour for a class id (golden-ratio hue steps)."""
    hue = (int(label) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


REFERENCE_SIDE = 640  # a frame this size (mean of height and width) gets 2 px lines and font scale 0.5


def draw_style(height: int, width: int) -> Tuple[int, float, int]:
    """(line width px, font scale, text stroke px) that look the same on a 640x480 frame and a 6000x4000 photo:
    both grow with the image's mean side (2 px / 0.5 at 640, about 16 px / 3.9 at 5000)."""
    k = max(1.0, (height + width) / 2 / REFERENCE_SIDE)
    return max(2, int(round(2 * k))), 0.5 * k, max(1, int(round(k)))


def _overlaps(a: Tuple[int, int, int, int], b: Tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _label_rect(box: Tuple[int, int, int, int], tw: int, th: int, base: int, w: int, h: int,
                taken: List[Tuple[int, int, int, int]], below_first: bool = False) -> Tuple[int, int, int, int]:
    """Where a label goes: above the box, else inside its top, else below it (below first when asked);
    slid down past labels already drawn."""
    x0, y0, _, y1 = box
    tx = max(0, min(x0, w - tw))
    lh = th + base + 2
    for top in ((y1, y0 - lh, y0) if below_first else (y0 - lh, y0, y1)):
        rect = (tx, top, tx + tw, top + lh)
        if top >= 0 and top + lh <= h and not any(_overlaps(rect, t) for t in taken):
            return rect
    top = max(0, min(y0 - lh, h - lh))
    rect = (tx, top, tx + tw, top + lh)
    while any(_overlaps(rect, t) for t in taken) and rect[3] + lh <= h:  # never print over another label
        top += lh
        rect = (tx, top, tx + tw, top + lh)
    return rect


def draw(frame: np.ndarray, detections: Detections, thickness: Optional[int] = None, font_scale: Optional[float] = None,
         show_scores: bool = True, colors: Optional[Sequence[Color]] = None, copy: bool = True,
         color_by_track: bool = False) -> np.ndarray:
    """Draw boxes_xyxy (frame pixels) with "name score" labels; returns the frame (a copy unless copy=False).

    thickness / font_scale: None = scaled to the frame (`draw_style`), so boxes stay visible on large photos.
    colors: BGR colour per class id (default `class_color`); color_by_track: a colour per track id instead.
    Labels never cover each other: one that would is moved inside or below its box, or further down.
    Track ids, when present, are shown as "#id".
    """
    out = frame.copy() if copy else frame
    h, w = out.shape[:2]
    line, scale, stroke = draw_style(h, w)
    thickness = line if thickness is None else thickness
    font_scale = scale if font_scale is None else font_scale
    stroke = stroke if font_scale == scale else max(1, int(round(font_scale * 2)))
    taken: List[Tuple[int, int, int, int]] = []
    track_ids = getattr(detections, "track_ids", None)
    order = np.argsort(-np.asarray(detections.scores)) if len(detections) else []
    for i in order:  # most confident first: they get the best label places
        box, score, label, name = detections.boxes_xyxy[i], detections.scores[i], detections.labels[i], detections.names[i]
        tracked = track_ids is not None and int(track_ids[i]) >= 0
        if color_by_track and tracked:
            color = class_color(int(track_ids[i]))
        else:
            color = tuple(int(c) for c in colors[label]) if colors is not None else class_color(int(label))
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thickness)
        text = f"{name} {score:.2f}" if show_scores else str(name)
        if tracked:
            text = f"#{int(track_ids[i])} {text}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, stroke)
        rect = _label_rect((x0, y0, x1, y1), tw, th, base, w, h, taken)
        taken.append(rect)
        cv2.rectangle(out, rect[:2], rect[2:], color, -1)
        cv2.putText(out, text, (rect[0], rect[3] - base - 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), stroke,
                    cv2.LINE_AA)
    return out


def draw_prompts(frame: np.ndarray, boxes_xyxy: Sequence[Sequence[float]], names: Sequence[str], color: Color = (255, 255, 255),
                 copy: bool = True) -> np.ndarray:
    """Draw the exemplar boxes a prompted detector was given: dashed, labelled "prompt: name"."""
    out = frame.copy() if copy else frame
    h, w = out.shape[:2]
    line, scale, stroke = draw_style(h, w)
    taken: List[Tuple[int, int, int, int]] = []
    for box, name in zip(boxes_xyxy, names):
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        dash = 5 * line
        for a, b, fixed, horizontal in ((x0, x1, y0, True), (x0, x1, y1, True), (y0, y1, x0, False), (y0, y1, x1, False)):
            for start in range(a, b, 2 * dash):
                end = min(start + dash, b)
                p, q = ((start, fixed), (end, fixed)) if horizontal else ((fixed, start), (fixed, end))
                cv2.line(out, p, (q[0], q[1]), (0, 0, 0), 2 * line, cv2.LINE_AA)
                cv2.line(out, p, (q[0], q[1]), color, line, cv2.LINE_AA)
        text = f"prompt: {name}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.1 * scale, stroke)
        # below the box: detection labels, drawn later on the same frame, go above theirs
        rect = _label_rect((x0, y0, x1, y1), tw, th, base, w, h, taken, below_first=True)
        taken.append(rect)
        cv2.rectangle(out, rect[:2], rect[2:], (0, 0, 0), -1)
        cv2.putText(out, text, (rect[0], rect[3] - base - 1), cv2.FONT_HERSHEY_SIMPLEX, 1.1 * scale, color, stroke, cv2.LINE_AA)
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
