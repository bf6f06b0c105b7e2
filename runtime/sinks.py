"""Where pipeline results go: a window, a video file, a JSON-lines file, or a callback.

A sink is any callable taking a `pipeline.Result`; a `close()` method, if present, is called
when the pipeline ends. Sinks that draw take a copy of the frame, so sinks do not affect
each other.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import cv2

from runtime.draw import draw, draw_fps
from runtime.preprocess import letterbox
from runtime.pipeline import Result, StopPipeline


class RateMeter:
    """Smoothed events per second (exponential moving average of the interval)."""

    def __init__(self, smoothing: float = 0.9):
        self.smoothing, self._interval, self._last = smoothing, 0.0, 0.0

    def tick(self) -> float:
        now = time.perf_counter()
        if self._last:
            dt = now - self._last
            self._interval = dt if not self._interval else self.smoothing * self._interval + (1 - self.smoothing) * dt
        self._last = now
        return self.rate

    @property
    def rate(self) -> float:
        return 1.0 / self._interval if self._interval > 0 else 0.0


class ShowSink:
    """Shows each frame with its detections and an FPS overlay; 'q' or Esc stops the pipeline."""

    def __init__(self, window: str = "edgedet", overlay_fps: bool = True):
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise RuntimeError("cannot show a window: no display (DISPLAY is not set); run on a desktop or over ssh -X, "
                               "or save the output instead (--save out.mp4 / --json out.jsonl)")
        try:
            cv2.namedWindow(window, cv2.WINDOW_NORMAL)
        except cv2.error as e:
            raise RuntimeError("cannot show a window: this OpenCV has no GUI support (opencv-python-headless?); "
                               f"pip install opencv-python, or save the output instead ({str(e).strip().splitlines()[-1]})") from e
        self.window, self.overlay_fps, self.meter = window, overlay_fps, RateMeter()

    def __call__(self, result: Result) -> None:
        image = draw(result.frame.image, result.detections)
        if self.overlay_fps:
            draw_fps(image, self.meter.tick(), result.latency_ms)
        cv2.imshow(self.window, image)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            raise StopPipeline

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.window)
        except cv2.error:
            pass  # window already closed by the user


class VideoSink:
    """Writes annotated frames to a video file; size comes from the first frame (or `size_hw`), fps from the
    source (default 30). A frame of another size is letterboxed to it: a video writer silently drops frames
    whose size differs, so a folder of mixed images would otherwise lose all but a few."""

    def __init__(self, path: Union[str, Path], fps: float = 30.0, fourcc: str = "mp4v", annotate: bool = True, overlay_fps: bool = False,
                 size_hw: Optional[tuple] = None):
        self.path = Path(path)
        self.size_hw = tuple(size_hw) if size_hw else None
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        self.fps, self.fourcc, self.annotate, self.overlay_fps = float(fps), fourcc, annotate, overlay_fps
        self._writer: Optional[cv2.VideoWriter] = None
        self.meter = RateMeter()
        self.frames = 0

    def __call__(self, result: Result) -> None:
        image = draw(result.frame.image, result.detections) if self.annotate else result.frame.image
        if self.overlay_fps:
            image = image if self.annotate else image.copy()  # never draw on the shared frame
            draw_fps(image, self.meter.tick(), result.latency_ms)
        if self._writer is None:
            self.size_hw = self.size_hw or image.shape[:2]
            h, w = self.size_hw
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
            if not self._writer.isOpened():
                raise RuntimeError(f"cannot write video {self.path} with codec {self.fourcc}; try a .avi file with fourcc='MJPG'")
        if image.shape[:2] != tuple(self.size_hw):
            image = letterbox(image, self.size_hw)[0]
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class JsonLinesSink:
    """One JSON object per frame: `stream` (multi-stream runs) and `file` (a folder of images) when they apply,
    then `frame`, `timestamp`, `latency_ms`, `image_size`, `detections`, `timings_ms`."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        self._file = open(self.path, "w", encoding="utf-8")

    def __call__(self, result: Result) -> None:
        record = {"frame": result.frame.index, "timestamp": round(result.frame.timestamp, 6), "latency_ms": round(result.latency_ms, 3)}
        file = getattr(result.frame, "file", None)  # a folder of images: each line names its file
        if file:
            record = {"file": file, **record}
        stream = getattr(result, "stream", None)  # multi-stream results name their source
        if stream:
            record = {"stream": stream, **record}
        record.update(result.detections.to_dict())
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class CallbackSink:
    """Calls fn(result) per frame (fn(frame_bgr, detections) when pass_result=False)."""

    def __init__(self, fn: Callable[..., Any], pass_result: bool = True):
        self.fn, self.pass_result = fn, pass_result

    def __call__(self, result: Result) -> None:
        if self.pass_result:
            self.fn(result)
        else:
            self.fn(result.frame.image, result.detections)
