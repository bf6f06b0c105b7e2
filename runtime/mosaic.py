"""A mosaic of several streams' newest annotated frames, for one window (or one video) of many cameras."""
from __future__ import annotations

import math
import threading
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

from runtime.draw import draw
from runtime.pipeline import Result


def mosaic(images: Sequence[Optional[np.ndarray]], cell_hw: Tuple[int, int] = (360, 640), labels: Sequence[str] = ()) -> np.ndarray:
    """Tile images into a near-square grid of equal cells (letterboxed, black when None), names in the corner."""
    n = max(1, len(images))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    ch, cw = cell_hw
    out = np.zeros((rows * ch, cols * cw, 3), np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        cell = out[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw]
        if image is not None:
            if image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            h, w = image.shape[:2]
            s = min(ch / h, cw / w)
            nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
            y, x = (ch - nh) // 2, (cw - nw) // 2
            cell[y:y + nh, x:x + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        if i < len(labels):
            cv2.putText(cell, labels[i], (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 4, cv2.LINE_AA)
            cv2.putText(cell, labels[i], (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
    return out


class MosaicSink:
    """A shared sink: keeps each stream's newest annotated frame and hands the tiled mosaic to `display`.

    display: callable taking the mosaic BGR image (e.g. a window or a video writer); it is
    called at most every `min_interval_s`, so many streams do not multiply the drawing work.
    """

    def __init__(self, streams: Sequence[str], display: Callable[[np.ndarray], None], cell_hw: Tuple[int, int] = (360, 640),
                 min_interval_s: float = 0.0):
        self.streams = list(streams)
        self.display, self.cell_hw, self.min_interval_s = display, cell_hw, float(min_interval_s)
        self.latest: Dict[str, np.ndarray] = {}
        self._last_shown = 0.0
        self._lock = threading.Lock()

    def __call__(self, result: Result) -> None:
        name = getattr(result, "stream", "") or self.streams[0]
        with self._lock:
            self.latest[name] = draw(result.frame.image, result.detections)
            now = time.perf_counter()
            if now - self._last_shown < self.min_interval_s:
                return
            self._last_shown = now
            image = mosaic([self.latest.get(s) for s in self.streams], self.cell_hw, self.streams)
        self.display(image)

    def close(self) -> None:
        close = getattr(self.display, "close", None)
        if callable(close):
            close()
