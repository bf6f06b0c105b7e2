"""The pipeline part of `edgedet benchmark`: what an app gets per frame, capture -> draw, for every engine.

Each engine runs the whole loop an application runs on one thread: read a frame from the source (decode),
detect (the Detector's own preprocess / infer / postprocess timings), draw the detections above the drawing
threshold. Engines take turns frame by frame (round-robin, as the latency timing) so load hits them alike.
The default source is a rendered 1920x1080 clip stored as JPEG files in the run folder (capture = a 1080p
JPEG decode, as from an MJPEG camera); `--source` takes a video, a folder or a camera instead.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np

from runtime.capture import Source, open_source
from runtime.draw import draw

PIPELINE_COLUMNS = ["input_format", "capture_ms", "preprocess_ms", "infer_ms", "postprocess_ms", "draw_ms", "pipeline_fps", "pre_vs_infer"]
SOURCE_HW = (1080, 1920)
DRAW_CONF = 0.25  # drawing threshold when an engine's manifest recommends none


def render_source(folder: Path, frames: Sequence[np.ndarray]) -> Path:
    """Write `frames` as JPEG files into `folder` (a fresh run folder) -> the folder, a source `open_source` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        if not cv2.imwrite(str(folder / f"frame_{i:03d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 90]):
            raise OSError(f"could not write {folder / f'frame_{i:03d}.jpg'}")
    return folder


class CyclingSource:
    """Frames from `spec` without end: a file or folder source is reopened when it runs out."""

    def __init__(self, spec: Any):
        self.spec = spec
        self.source: Source = open_source(spec)

    def read(self) -> np.ndarray:
        for _ in range(2):
            frame = self.source.read(timeout=10.0)
            if frame is not None:
                return frame.image
            if self.source.is_live:
                break
            self.source.close()
            self.source = open_source(self.spec)
        raise RuntimeError(f"source {self.spec} gave no frame (empty, unreadable, or a camera that stopped)")

    def close(self) -> None:
        self.source.close()


def draw_threshold(det: Any) -> float:
    outputs = getattr(getattr(det, "manifest", None), "outputs", None)
    value = getattr(outputs, "score_threshold", None)
    return float(value) if value else DRAW_CONF


def time_pipelines(dets: Dict[Any, Any], source: Any, iters: int) -> Dict[Any, Dict[str, Any]]:
    """dets: key -> detector; source: anything `open_source` reads. -> key -> the PIPELINE_COLUMNS figures:
    median ms of each stage, frames per second of the whole loop (frames / summed loop time), and the
    preprocess share of inference (median preprocess ms / median infer ms)."""
    frames = CyclingSource(source)
    stages = ("capture", "preprocess", "infer", "postprocess", "draw")
    times: Dict[Any, Dict[str, List[float]]] = {k: {s: [] for s in stages + ("total",)} for k in dets}
    conf = {k: draw_threshold(d) for k, d in dets.items()}
    try:
        for key, det in dets.items():  # warm-up: first calls allocate
            draw(frames.read(), det(frames.read()).filter(min_score=conf[key]), copy=False)
        for _ in range(iters):
            for key, det in dets.items():
                t0 = time.perf_counter()
                image = frames.read()
                t1 = time.perf_counter()
                dets_ = det(image)
                t2 = time.perf_counter()
                draw(image, dets_.filter(min_score=conf[key]), copy=False)
                t3 = time.perf_counter()
                rec = times[key]
                rec["capture"].append((t1 - t0) * 1e3)
                rec["draw"].append((t3 - t2) * 1e3)
                rec["total"].append((t3 - t0) * 1e3)
                for stage in ("preprocess", "infer", "postprocess"):
                    if stage in dets_.timings_ms:
                        rec[stage].append(dets_.timings_ms[stage])
    finally:
        frames.close()
    out: Dict[Any, Dict[str, Any]] = {}
    for key, rec in times.items():
        med = {s: round(float(np.median(v)), 2) if v else None for s, v in rec.items()}
        row: Dict[str, Any] = {f"{s}_ms": med[s] for s in stages}
        row["pipeline_fps"] = round(1e3 * len(rec["total"]) / sum(rec["total"]), 2) if rec["total"] else None
        row["pre_vs_infer"] = round(med["preprocess"] / med["infer"], 3) if med["preprocess"] and med["infer"] else None
        out[key] = row
    return out


def pipeline_source(source: Optional[str], out: Path, frames: Sequence[np.ndarray]) -> Any:
    """`source` when given, else `frames` (rendered at SOURCE_HW) written under `out`."""
    return source if source else render_source(out / "pipeline_source", frames)


__all__ = ["PIPELINE_COLUMNS", "SOURCE_HW", "CyclingSource", "draw_threshold", "pipeline_source", "render_source",
           "time_pipelines"]
