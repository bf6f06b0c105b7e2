"""PR curves and confusion matrices drawn with OpenCV (no matplotlib needed on the device)."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from runtime.draw import class_color

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(img: np.ndarray, text: str, org, scale: float = 0.45, color=(40, 40, 40), thickness: int = 1) -> None:
    cv2.putText(img, text, (int(org[0]), int(org[1])), _FONT, scale, color, thickness, cv2.LINE_AA)


def pr_curve_image(recall: np.ndarray, precision: np.ndarray, names: Sequence[str], aps: Sequence[float],
                   title: str = "Precision-recall, IoU 0.5", size=(560, 820)) -> np.ndarray:
    """precision [R, K] over recall [R] (COCOeval's 101 points; -1 = class absent) -> BGR image."""
    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    x0, y0, x1, y1 = 60, 40, w - 240, h - 50  # plot area; legend on the right
    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
    for t in np.linspace(0, 1, 6):
        xx, yy = int(x0 + t * (x1 - x0)), int(y1 - t * (y1 - y0))
        cv2.line(img, (xx, y0), (xx, y1), (225, 225, 225), 1)
        cv2.line(img, (x0, yy), (x1, yy), (225, 225, 225), 1)
        _text(img, f"{t:.1f}", (xx - 10, y1 + 18))
        _text(img, f"{t:.1f}", (x0 - 35, yy + 5))
    _text(img, "recall", ((x0 + x1) // 2 - 20, h - 12), 0.5)
    _text(img, "precision", (5, y0 - 12), 0.5)
    _text(img, title, (x0 + 10, 25), 0.6, (0, 0, 0))

    def pts(p: np.ndarray) -> np.ndarray:
        return np.stack([x0 + recall * (x1 - x0), y1 - np.clip(p, 0, 1) * (y1 - y0)], 1).round().astype(np.int32)

    valid = [k for k in range(precision.shape[1]) if (precision[:, k] >= 0).any()]
    for k in valid:
        cv2.polylines(img, [pts(precision[:, k])], False, class_color(k), 2, cv2.LINE_AA)
    if valid:
        mean = np.where(precision[:, valid] >= 0, precision[:, valid], 0).mean(1)
        cv2.polylines(img, [pts(mean)], False, (0, 0, 0), 3, cv2.LINE_AA)
    ly = y0 + 10
    for k, (name, ap) in enumerate(zip(names, aps)):
        if ly > y1:
            break
        cv2.line(img, (x1 + 15, ly), (x1 + 40, ly), class_color(k), 3)
        _text(img, f"{name} {ap:.3f}" if ap >= 0 else f"{name} (no labels)", (x1 + 48, ly + 5))
        ly += 22
    if valid:
        cv2.line(img, (x1 + 15, ly), (x1 + 40, ly), (0, 0, 0), 3)
        _text(img, f"all {float(np.mean([aps[k] for k in valid])):.3f}", (x1 + 48, ly + 5), 0.45, (0, 0, 0))
    return img


def confusion_matrix_image(matrix: np.ndarray, names: Sequence[str], title: str = "Confusion matrix") -> np.ndarray:
    """matrix [C+1, C+1] counts, rows = predicted (last: background = missed), cols = true (last: background = false positive)."""
    labels = list(names) + ["background"]
    n = len(labels)
    cell = max(28, min(70, 560 // n))
    margin_l, margin_t = 130, 120
    img = np.full((margin_t + n * cell + 30, margin_l + n * cell + 20, 3), 255, np.uint8)
    col_sum = matrix.sum(0, keepdims=True).clip(min=1)
    norm = matrix / col_sum  # each true class's share
    for i in range(n):
        for j in range(n):
            v = float(norm[i, j])
            shade = int(255 - 200 * v)
            y, x = margin_t + i * cell, margin_l + j * cell
            cv2.rectangle(img, (x, y), (x + cell, y + cell), (255, shade, shade), -1)
            cv2.rectangle(img, (x, y), (x + cell, y + cell), (200, 200, 200), 1)
            if matrix[i, j]:
                _text(img, str(int(matrix[i, j])), (x + 4, y + cell // 2 + 5), 0.4, (0, 0, 0) if v < 0.6 else (255, 255, 255))
    for k, name in enumerate(labels):
        _text(img, name[:16], (5, margin_t + k * cell + cell // 2 + 5), 0.4)
        tx = margin_l + k * cell + cell // 2
        # column labels written diagonally would need rotation; stack them vertically instead
        cv2.putText(img, name[:10], (tx - 4 * min(len(name), 10) // 1, margin_t - 8 - (k % 2) * 16), _FONT, 0.4, (40, 40, 40), 1, cv2.LINE_AA)
    _text(img, title + "  (columns: true, rows: predicted)", (5, 22), 0.5, (0, 0, 0))
    _text(img, "true", (margin_l, 50), 0.5)
    return img
