"""What the live view holds of the stream: the newest result, recent frames to prompt on, frames
pinned by viewers, and the JPEGs shared by every viewer.

The pipeline thread calls `publish` (O(1) besides trimming the ring); everything else runs on the
server's event loop. Memory is bounded: the ring of recent frames exists only when prompting is
possible and holds at most `ring_bytes` of raw frames; each viewer pins at most one frame, at most
`max_pins` viewers pin at once, and a pin ends when its prompt is added, the viewer goes back to
live, its stream has been gone for `gone_s`, or it was left untouched for `pin_idle_s`.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Tuple

import cv2
import numpy as np

from runtime.draw import draw

RING_BYTES = 64 * 2**20  # recent raw frames kept for prompting: ~10 at 1080p, ~70 at 640x480
RING_MAX_FRAMES = 64


class FrameStore:
    def __init__(self, keep_recent: bool, ring_bytes: int = RING_BYTES, max_pins: int = 8, pin_idle_s: float = 300.0,
                 gone_s: float = 10.0):
        self.keep_recent = keep_recent
        self.ring_bytes, self.max_pins, self.pin_idle_s, self.gone_s = int(ring_bytes), int(max_pins), pin_idle_s, gone_s
        self._lock = threading.Lock()
        self.latest: Any = None  # the newest Result
        self.version = 0
        self._ring: "OrderedDict[int, Any]" = OrderedDict()  # frame index -> Result (only with keep_recent)
        self._pins: "OrderedDict[str, list]" = OrderedDict()  # viewer -> [Result, last touched]
        self._streams: Dict[str, int] = {}  # viewer -> open streams
        self._left: Dict[str, float] = {}  # viewer -> when its last stream ended
        self._shown: Dict[str, Any] = {}  # viewer -> the Result last written to its stream

    # -- pipeline thread ------------------------------------------------------------------------
    def publish(self, result: Any) -> int:
        with self._lock:
            self.latest = result
            self.version += 1
            if self.keep_recent:
                self._ring[result.frame.index] = result
                limit = min(RING_MAX_FRAMES, max(1, self.ring_bytes // max(1, result.frame.image.nbytes)))
                while len(self._ring) > limit:
                    self._ring.popitem(last=False)
            return self.version

    def newest(self) -> Tuple[Any, int]:
        with self._lock:
            return self.latest, self.version

    @property
    def ring_frames(self) -> int:
        return len(self._ring)

    def recent(self, index: int) -> Any:
        with self._lock:
            return self._ring.get(int(index))

    # -- pins (one per viewer) ---------------------------------------------------------------------
    def pin(self, viewer: str) -> Any:
        """Pin the newest frame for `viewer` (replacing its earlier pin); the oldest pin gives way past max_pins."""
        with self._lock:
            result = self.latest
            if result is None:
                return None
            self._pins.pop(viewer, None)
            self._pins[viewer] = [result, time.monotonic()]
            while len(self._pins) > self.max_pins:
                self._pins.popitem(last=False)
            return result

    def pinned(self, viewer: Optional[str], touch: bool = True) -> Any:
        with self._lock:
            entry = self._pins.get(viewer) if viewer else None
            if entry is None:
                return None
            if touch:
                entry[1] = time.monotonic()
            return entry[0]

    def release(self, viewer: Optional[str]) -> bool:
        with self._lock:
            return self._pins.pop(viewer, None) is not None if viewer else False

    @property
    def pins(self) -> int:
        return len(self._pins)

    def expire(self) -> int:
        """Release pins left idle past pin_idle_s and those of viewers whose stream is gone for gone_s."""
        now = time.monotonic()
        with self._lock:
            # a viewer whose stream ended (the page closed) loses its pin after gone_s; API clients that never
            # streamed keep theirs until the idle timeout
            stale = [v for v, (_, touched) in self._pins.items()
                     if now - touched > self.pin_idle_s or (v in self._left and now - self._left[v] > self.gone_s)]
            for v in stale:
                del self._pins[v]
            for v in [v for v, t in self._left.items() if now - t > self.gone_s and not self._streams.get(v)]:
                del self._left[v]
                self._shown.pop(v, None)
            return len(stale)

    # -- viewers' streams --------------------------------------------------------------------------------
    def stream_opened(self, viewer: str) -> None:
        with self._lock:
            self._streams[viewer] = self._streams.get(viewer, 0) + 1
            self._left.pop(viewer, None)

    def stream_closed(self, viewer: str) -> None:
        with self._lock:
            n = self._streams.get(viewer, 1) - 1
            if n > 0:
                self._streams[viewer] = n
            else:
                self._streams.pop(viewer, None)
                self._left[viewer] = time.monotonic()

    def shown(self, viewer: str, result: Any) -> None:
        with self._lock:
            self._shown[viewer] = result

    def on_screen(self, viewer: Optional[str]) -> Any:
        """The result a viewer sees: its pinned frame, else the last one written to its stream, else the newest."""
        with self._lock:
            if viewer and viewer in self._pins:
                return self._pins[viewer][0]
            if viewer and viewer in self._shown:
                return self._shown[viewer]
            return self.latest


class SharedJpeg:
    """One JPEG encode per (frame, kind) however many viewers ask: the first asker encodes in a worker
    thread, the others await the same future. Runs on the server loop only."""

    def __init__(self, quality: int = 80):
        self.quality = int(quality)
        self.encodes = 0
        self._cache: Dict[str, Tuple[int, "asyncio.Future[Optional[bytes]]"]] = {}

    def _encode(self, image: np.ndarray) -> Optional[bytes]:
        self.encodes += 1
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        return buf.tobytes() if ok else None

    def encode_now(self, image: np.ndarray) -> Optional[bytes]:
        """An uncached encode (a pinned frame, once per freeze)."""
        return self._encode(image)

    async def get(self, kind: str, version: int, result: Any) -> Optional[bytes]:
        cached = self._cache.get(kind)
        if cached is None or cached[0] != version:
            render: Callable[[], np.ndarray] = ((lambda: draw(result.frame.image, result.detections))
                                                if kind == "annotated" else (lambda: result.frame.image))
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(None, lambda: self._encode(render()))
            cached = (version, asyncio.ensure_future(future))
            self._cache[kind] = cached
        return await asyncio.shield(cached[1])
