"""A prompted detector that a browser may re-prompt while the pipeline runs.

The pipeline's detect thread calls it on every frame while the web server's thread adds or
removes prompts; one lock serialises the two (a prompt is encoded once, ~10-20 ms, between
two frames). With no prompt yet it returns no detections instead of failing, so a live view
can start empty and be prompted from the page.
"""
from __future__ import annotations

import re
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np

from runtime.track.bytetrack import iou_matrix
from runtime.types import Detections

_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def merge_overlapping(det: Detections, iou: float) -> Detections:
    """One box per object: a box overlapping a higher-scoring one by >= `iou` joins it, whatever its name,
    and the kept box is labelled with every name of its group, best first ("my shape / triangle").
    Two prompts standing for one class (a user names again what is already prompted) then show as one box."""
    if len(det) < 2:
        return det
    order = np.argsort(-det.scores, kind="stable")
    overlap = iou_matrix(det.boxes_xyxy, det.boxes_xyxy) >= iou
    names, taken = det.names, np.zeros(len(det), bool)
    class_names, keep, labels = list(det.class_names), [], []
    for i in order:
        if taken[i]:
            continue
        group = [j for j in order if not taken[j] and overlap[i, j]]
        taken[group] = True
        label = " / ".join(dict.fromkeys(names[j] for j in group))
        if label not in class_names:
            class_names.append(label)
        keep.append(i)
        labels.append(class_names.index(label))
    index = np.asarray(keep, np.int64)
    merged = det.select(index)
    return replace(merged, labels=np.asarray(labels, np.int64), class_names=tuple(class_names))


class LivePromptedDetector:
    """Wraps a `runtime.PromptedDetector`; prompt files are kept in `prompt_dir` only.
    merge_iou: boxes overlapping this much are one object, shown once with all their names (None = off)."""

    def __init__(self, detector: Any, prompt_dir: Path, inputs: Sequence[Any] = (), merge_iou: Optional[float] = None):
        self.detector = detector
        self.prompt_dir = Path(prompt_dir)
        self.inputs = list(inputs)  # the artifacts in use: a prompt file never replaces one of their files
        self.merge_iou = merge_iou
        self._lock = threading.Lock()

    @property
    def names(self) -> Sequence[str]:
        return tuple(self.detector.prompt_names)

    @property
    def class_names(self) -> Sequence[str]:
        return self.names

    def __call__(self, frame_bgr: np.ndarray) -> Detections:
        with self._lock:
            if not self.detector.prompt_names:
                return Detections.empty((), frame_bgr.shape[:2])
            det = self.detector(frame_bgr)
        return det if self.merge_iou is None else merge_overlapping(det, self.merge_iou)

    def add(self, image: np.ndarray, box: Optional[Sequence[float]] = None, point: Optional[Sequence[float]] = None,
            name: str = "") -> None:
        """One exemplar (box xyxy or point, image pixels) on `image`, under `name`."""
        name = name.strip()
        if not name or len(name) > 64:
            raise ValueError("a prompt needs a name of 1 to 64 characters")
        if (box is None) == (point is None):
            raise ValueError("give either box [x0, y0, x1, y1] or point [x, y] in frame pixels")
        h, w = image.shape[:2]
        if box is not None:
            b = np.asarray(box, np.float32).reshape(-1)
            if b.size != 4 or not np.all(np.isfinite(b)) or b[2] - b[0] < 2 or b[3] - b[1] < 2:
                raise ValueError(f"box must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0 (pixels), got {list(box)}")
            b = np.clip(b, 0, [w, h, w, h])
            with self._lock:
                self.detector.add_prompt_image(image, boxes=b[None], names=name)
        else:
            p = np.asarray(point, np.float32).reshape(-1)
            if p.size != 2 or not np.all(np.isfinite(p)):
                raise ValueError(f"point must be [x, y] (pixels), got {list(point)}")
            with self._lock:
                self.detector.add_prompt_image(image, points=np.clip(p, 0, [w, h])[None], names=name)

    def remove(self, name: str) -> str:
        with self._lock:
            self.detector.remove_prompt(name)
        return name

    def _file(self, file: str) -> Path:
        stem = file[:-4] if file.endswith(".npz") else file
        if not _FILE_NAME.fullmatch(stem) or ".." in stem:
            raise ValueError("a prompt file name is letters, digits, '_', '-', '.' (no folders), e.g. shop-shelf")
        return self.prompt_dir / f"{stem}.npz"

    def save(self, file: str, overwrite: bool = False) -> Path:
        path = self._file(file)
        from runtime.safety import refuse_output_over_input

        refuse_output_over_input([path], self.inputs, what="prompt file")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path.name} exists; save under another name or confirm overwrite")
        self.prompt_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            return self.detector.save_prompts(path)

    def load(self, file: str) -> Path:
        path = self._file(file)
        with self._lock:
            self.detector.load_prompts(path)
        return path

    def files(self) -> List[str]:
        return sorted(p.stem for p in self.prompt_dir.glob("*.npz")) if self.prompt_dir.is_dir() else []

    def close(self) -> None:
        self.detector.close()
