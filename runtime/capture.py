"""Frame sources: cameras, video files, images, folders, RTSP/HTTP streams, GStreamer pipelines, iterators.

Two kinds, told apart by `Source.is_live`:
- files, folders and plain iterators are read in order, every frame, at the consumer's pace;
- live sources (cameras, streams, GStreamer, `live=True` iterators, a video file played at
  its own fps) run a reader thread that keeps only the newest frame, so a slow consumer
  sees fresh frames instead of a growing backlog; a lost stream is reopened a bounded
  number of times.
`open_source(spec)` picks the kind from what it is given.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Optional, Union

import cv2
import numpy as np

from runtime.environment import build_has_gstreamer, opencv_info
from runtime.image_io import read_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
CAPTURE_APIS = {"any": cv2.CAP_ANY, "v4l2": cv2.CAP_V4L2, "gstreamer": cv2.CAP_GSTREAMER, "ffmpeg": cv2.CAP_FFMPEG}


@dataclass
class Frame:
    """One captured image: BGR uint8 [H, W, 3], its index in the source, capture time (perf_counter s), and
    the file it was read from when the source is a folder or list of images (outputs are named after it)."""

    image: np.ndarray
    index: int
    timestamp: float
    file: Optional[str] = None


class EndOfStream(Exception):
    """Raised by a live source's producer when the stream ends normally (no reconnect)."""


class Source:
    """Base of all sources: `read()` -> next Frame or None at the end; iterable; context manager."""

    is_live = False
    fps = 0.0  # nominal frames per second, 0 when unknown

    def __init__(self, name: str):
        self.name = name
        self.dropped = 0  # frames replaced before anyone read them (live sources)
        self.skipped: List[str] = []  # inputs that could not be decoded (named in a warning, then skipped)
        self.truncated: List[str] = []  # truncated JPEGs processed as far as they decode (named in a warning)

    def read(self, timeout: Optional[float] = None) -> Optional[Frame]:
        """Next frame, or None at the end of the source."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file; safe to call twice."""

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, live={self.is_live})"


class SequentialSource(Source):
    """Pulls images from a producer one by one on the caller's thread: nothing is dropped."""

    def __init__(self, name: str, images: Iterator[Optional[np.ndarray]], fps: float = 0.0, release: Callable[[], None] = lambda: None):
        super().__init__(name)
        self._images, self._release, self.fps = images, release, fps
        self._index = 0
        self._closed = False
        # Decoders (FFmpeg) abort if released while another thread is inside read().
        self._lock = threading.Lock()

    def read(self, timeout: Optional[float] = None) -> Optional[Frame]:
        with self._lock:
            if self._closed:
                return None
            image = next(self._images, None)
            if image is None:
                return None
            file = None
            if isinstance(image, tuple):  # (image, file name): a folder's images keep their names
                image, file = image
            frame = Frame(image, self._index, time.perf_counter(), file)
            self._index += 1
            return frame

    def close(self) -> None:
        acquired = self._lock.acquire(timeout=10.0)
        if not acquired:
            log.warning("source %s: a read did not finish within 10 s; releasing anyway", self.name)
        try:
            if not self._closed:
                self._closed = True
                self._release()
        finally:
            if acquired:
                self._lock.release()


class LiveSource(Source):
    """A reader thread keeps only the newest frame; `read()` waits for one newer than the last.

    Subclasses give `_open()`, `_grab() -> image | None` (None = failure, retried after
    reopening up to `reconnects` times; raise EndOfStream for a normal end) and `_release()`.
    """

    is_live = True

    def __init__(self, name: str, reconnects: int = 5, retry_delay: float = 0.5):
        super().__init__(name)
        self.reconnects, self.retry_delay = int(reconnects), float(retry_delay)
        self._cond = threading.Condition()
        self._latest: Optional[Frame] = None
        self._done = False
        self._error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._count = 0
        self._thread: Optional[threading.Thread] = None

    def _open(self) -> None:
        raise NotImplementedError

    def _grab(self) -> Optional[np.ndarray]:
        raise NotImplementedError

    def _release(self) -> None:
        pass

    def start(self) -> "LiveSource":
        self._open()
        self._thread = threading.Thread(target=self._reader, name=f"edgedet-capture-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _reader(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    image = self._grab()
                except EndOfStream:
                    return
                if image is None:
                    if failures >= self.reconnects:
                        raise RuntimeError(f"lost source {self.name}: no frames after {self.reconnects} reconnect attempts; "
                                           "check the cable/network and that the device is not used elsewhere")
                    failures += 1
                    log.warning("source %s: read failed, reconnecting (%d/%d)", self.name, failures, self.reconnects)
                    self._release()
                    if self._stop.wait(self.retry_delay):
                        return
                    try:
                        self._open()
                    except Exception as e:  # keep trying until the budget is spent
                        log.warning("source %s: reopen failed: %s", self.name, e)
                    continue
                failures = 0
                with self._cond:
                    if self._latest is not None:
                        self.dropped += 1
                    self._latest = Frame(image, self._count, time.perf_counter())
                    self._count += 1
                    self._cond.notify_all()
        except BaseException as e:  # handed to the consumer by read()
            self._error = e
        finally:
            self._release()
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def read(self, timeout: Optional[float] = None) -> Optional[Frame]:
        """Newest frame not yet returned, None at the end; TimeoutError after `timeout` s; raises if the stream was lost."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._latest is not None or self._done, timeout):
                raise TimeoutError(f"no frame from {self.name} within {timeout} s")
            frame, self._latest = self._latest, None
            if frame is None and self._error is not None:
                raise self._error
            return frame

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        with self._cond:
            self._done = True
            self._cond.notify_all()


class _GuardedReader:
    """Runs `cap.read()` on a thread of its own, so a read that never returns (a camera or stream
    that stops answering) can be given up after a timeout instead of freezing the source.

    The capture is released on that same thread once it is idle (never while it is inside read():
    some backends abort then); a read that never returns leaves that one thread and capture behind.
    """

    def __init__(self, cap: Any, name: str):
        self.cap = cap
        self._cond = threading.Condition()
        self._wanted = False
        self._result: Optional[tuple] = None
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name=f"edgedet-read-{name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._wanted or self._closing)
                    if self._closing:
                        return
                try:
                    result = self.cap.read()
                except Exception as e:  # a backend error is a failed read, retried by reopening
                    log.warning("capture read raised %s: %s", type(e).__name__, e)
                    result = (False, None)
                with self._cond:
                    self._wanted, self._result = False, result
                    self._cond.notify_all()
        finally:
            self.cap.release()

    def read(self, timeout: Optional[float]) -> Optional[tuple]:
        """(ok, image) from cap.read(), or None when it did not return within `timeout` s (then this reader is closed)."""
        with self._cond:
            self._result, self._wanted = None, True
            self._cond.notify_all()
            if self._cond.wait_for(lambda: self._result is not None, timeout):
                return self._result
            self._closing = True  # the worker releases the capture if the stuck read ever returns
            return None

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            busy = self._wanted
        if not busy and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)


def is_finite_pipeline(pipeline: str) -> bool:
    """A GStreamer pipeline that ends by itself (a file, or num-buffers=N): its end is the end of the
    stream, not a lost camera to reconnect to."""
    return bool(re.search(r"(^|!)\s*(multi)?filesrc\b|\bnum-buffers\s*=\s*[0-9]", pipeline))


class CaptureSource(LiveSource):
    """A camera index, RTSP/HTTP URL or GStreamer pipeline read with cv2.VideoCapture.

    A read that returns nothing within `read_timeout` s (a camera or stream that stopped answering)
    counts as a lost stream: the source is reopened, up to `reconnects` times. A GStreamer pipeline
    that ends by itself (filesrc, num-buffers=N) ends the source at its end instead.
    """

    def __init__(self, target: Union[int, str], api: str = "any", reconnects: int = 5, retry_delay: float = 0.5,
                 width: int = 0, height: int = 0, fps: float = 0.0, read_timeout: float = 10.0):
        if api not in CAPTURE_APIS:
            raise ValueError(f"unknown capture api '{api}'; valid: {', '.join(CAPTURE_APIS)}")
        if not read_timeout > 0:
            raise ValueError(f"read_timeout must be > 0 seconds, got {read_timeout}")
        super().__init__(str(target), reconnects, retry_delay)
        self.target, self.api, self.read_timeout = target, api, float(read_timeout)
        self._size, self._want_fps = (width, height), fps
        self._reader_guard: Optional[_GuardedReader] = None
        self._finite = api == "gstreamer" and isinstance(target, str) and is_finite_pipeline(target)
        self._frames_this_open = 0
        self.start()

    def _open(self) -> None:
        if self.api == "gstreamer":
            info = opencv_info()
            if not info.gstreamer:
                raise RuntimeError(f"cannot open a GStreamer pipeline with this OpenCV: {info.summary()}")
        cap = cv2.VideoCapture(self.target, CAPTURE_APIS[self.api])
        if self._size[0] and self._size[1]:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self._size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self._size[1])
        if self._want_fps:
            cap.set(cv2.CAP_PROP_FPS, self._want_fps)
        if not cap.isOpened():
            cap.release()
            raise RuntimeError(self._open_error())
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._reader_guard = _GuardedReader(cap, self.name)
        self._frames_this_open = 0

    def _open_error(self) -> str:
        api = f"OpenCV backend {self.api.upper()}" if self.api != "any" else "OpenCV backend auto (CAP_ANY)"
        if isinstance(self.target, int):
            return (f"could not open camera {self.target} ({api}): check it is connected (ls /dev/video*), not in use by "
                    "another program, and readable by this user (group 'video'); for a Jetson CSI camera pass "
                    "jetson_csi_pipeline() instead of an index")
        if self.api == "gstreamer":
            return f"could not open GStreamer pipeline ({api}): test it with gst-launch-1.0 and end it in appsink: {self.target}"
        return f"could not open stream {self.target} ({api}): check the URL, credentials and network, e.g. with ffprobe"

    def _grab(self) -> Optional[np.ndarray]:
        if self._reader_guard is None:
            return None
        result = self._reader_guard.read(self.read_timeout)
        if result is None:
            log.warning("source %s: no frame within %.1f s (read_timeout); giving up on this read and reopening",
                        self.name, self.read_timeout)
            self._reader_guard = None  # closed by read(); releases the capture if the read ever returns
            return None
        ok, image = result
        if ok and image is not None:
            self._frames_this_open += 1
            return image
        if self._finite and self._frames_this_open > 0:
            raise EndOfStream
        return None

    def _release(self) -> None:
        if self._reader_guard is not None:
            self._reader_guard.close()
            self._reader_guard = None


class PacedVideoSource(LiveSource):
    """A video file played at its own fps as if it were a camera (latest frame only, drops when slow);
    loop=True starts it again at its end (a demo or kiosk that runs until stopped)."""

    def __init__(self, path: Union[str, Path], fps: float = 0.0, loop: bool = False):
        super().__init__(str(path), reconnects=0)
        self.path = Path(path)
        self._want_fps, self.loop = fps, bool(loop)
        self._cap: Optional[cv2.VideoCapture] = None
        self.start()

    def _open(self) -> None:
        self._cap = _open_video(self.path)
        self.fps = self._want_fps or float(self._cap.get(cv2.CAP_PROP_FPS) or 30.0)
        self._t0, self._n = time.perf_counter(), 0

    def _grab(self) -> Optional[np.ndarray]:
        ok, image = self._cap.read() if self._cap is not None else (False, None)
        if not ok and self.loop and self._n > 0:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._cap.read()
        if not ok:
            raise EndOfStream
        # Wait until this frame's due time so frames appear at the nominal rate.
        delay = self._t0 + self._n / self.fps - time.perf_counter()
        self._n += 1
        if delay > 0 and self._stop.wait(delay):
            raise EndOfStream
        return image

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class LiveIteratorSource(LiveSource):
    """Any iterator of BGR frames treated as live: pulled as fast as it yields, newest kept."""

    def __init__(self, frames: Iterable[np.ndarray], name: str = "iterator", fps: float = 0.0):
        super().__init__(name, reconnects=0)
        self._it = iter(frames)
        self.fps = fps
        self.start()

    def _open(self) -> None:
        pass

    def _grab(self) -> Optional[np.ndarray]:
        image = next(self._it, None)
        if image is None:
            raise EndOfStream
        return image


def _has_gstreamer() -> bool:
    return build_has_gstreamer(cv2.getBuildInformation())


# Video files decode on one FFmpeg thread: the engine already fills the cores, and FFmpeg's default (a thread
# per core) costs more CPU per frame (car video 432x768 H.264 on 2 cores: 0.80 ms with one thread against
# 0.93-1.39 ms with two), CPU the engine then lacks. EDGEDET_DECODE_THREADS=0 gives FFmpeg's default back.
DECODE_THREADS_ENV = "EDGEDET_DECODE_THREADS"


def decode_threads() -> int:
    value = os.environ.get(DECODE_THREADS_ENV, "1").strip()
    if not value.isdigit():
        raise ValueError(f"{DECODE_THREADS_ENV}={value!r}: give a number of threads (0 = FFmpeg's default, one per core)")
    return int(value)


def _open_video(path: Path) -> cv2.VideoCapture:
    threads = decode_threads()
    prop = getattr(cv2, "CAP_PROP_N_THREADS", None)  # OpenCV >= 4.7 (Debian's 4.6, JetPack 5's 4.5: their default)
    cap = cv2.VideoCapture(str(path), cv2.CAP_ANY, [prop, threads]) if prop is not None and threads else None
    if cap is None or not cap.isOpened():  # a backend that takes no thread count (GStreamer) refuses the parameter
        if cap is not None:
            cap.release()
        cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise RuntimeError(f"could not open video {path}: not a video OpenCV can decode (codec/container unsupported or file corrupt)")
    return cap


def video_source(path: Union[str, Path]) -> SequentialSource:
    """Every frame of a video file, in order."""
    cap = _open_video(Path(path))

    def frames() -> Iterator[np.ndarray]:
        while True:
            ok, image = cap.read()
            if not ok:
                return
            yield image

    return SequentialSource(str(path), frames(), fps=float(cap.get(cv2.CAP_PROP_FPS) or 0.0), release=cap.release)


def image_files(folder: Union[str, Path]) -> List[Path]:
    """Image files in `folder` (not recursive), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def images_source(paths: List[Path], name: str) -> SequentialSource:
    """Images read in order; an unreadable file is named in a warning, counted in `source.skipped`
    and skipped, so one bad file does not end the run. A single image that cannot be read raises.
    A truncated JPEG that still decodes is named in a warning and counted in `source.truncated`."""
    def frames() -> Iterator[np.ndarray]:
        for p in paths:
            image, truncated = read_image(p)
            if truncated and image is not None:
                source.truncated.append(str(p))
            if image is None:
                if len(paths) == 1:
                    raise RuntimeError(f"could not read image {p} (corrupt or not an image)")
                log.warning("skipping %s: cannot be decoded (corrupt or not an image)", p)
                source.skipped.append(str(p))
                continue
            yield image, p.name

    source = SequentialSource(name, frames())
    return source


def jetson_csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0,
                        output_width: int = 0, output_height: int = 0) -> str:
    """GStreamer pipeline for a Jetson CSI camera (nvarguscamerasrc) ending in a BGR appsink.

    flip: nvvidconv flip-method 0-7 (2 = rotate 180). The appsink keeps one buffer and drops
    older ones, so the camera never queues stale frames.
    """
    ow, oh = output_width or width, output_height or height
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, framerate=(fraction){fps}/1 ! "
        f"nvvidconv flip-method={flip} ! video/x-raw, width=(int){ow}, height=(int){oh}, format=(string)BGRx ! "
        "videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false"
    )


def open_source(spec: Any, live: Optional[bool] = None, **options: Any) -> Source:
    """Open what `spec` names.

    spec: a Source (returned as is); a camera index (int or "0"); an RTSP/HTTP URL; a GStreamer
    pipeline string (contains "!"); an image file; a folder of images; a video file (every frame
    in order, or played at its fps as a live camera with live=True); a numpy image; or any
    iterable of BGR frames (live=True: newest frame only). options go to CaptureSource
    (api, reconnects, width, height, fps, read_timeout); loop=True replays a video file played live.
    """
    loop = bool(options.pop("loop", False))
    if loop and not (isinstance(spec, (str, Path)) and Path(spec).is_file() and Path(spec).suffix.lower() not in IMAGE_SUFFIXES):
        raise ValueError(f"loop applies to video files only, not {spec!r}")
    if isinstance(spec, Source):
        return spec
    if isinstance(spec, np.ndarray):
        return SequentialSource("array", iter([spec]))
    if isinstance(spec, str) and spec.strip() and Path(spec).exists():
        spec = Path(spec)  # an existing file or folder always wins over a camera index or pipeline
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        return CaptureSource(int(spec), **options)
    if isinstance(spec, str) and "!" in spec:
        return CaptureSource(spec, api="gstreamer", **{k: v for k, v in options.items() if k != "api"})
    if isinstance(spec, str) and spec.lower().startswith(URL_SCHEMES):
        return CaptureSource(spec, **options)
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"source not found: {spec} (expected a camera index, a video/image file, a folder, "
                                    "an rtsp:// or http:// URL, or a GStreamer pipeline)")
        if path.is_dir():
            files = image_files(path)
            if not files:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            return images_source(files, str(path))
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return images_source([path], str(path))
        return PacedVideoSource(path, loop=loop, **options) if live or loop else video_source(path)
    if isinstance(spec, Iterable):
        return LiveIteratorSource(spec, **options) if live else SequentialSource("iterator", iter(spec))
    raise TypeError(f"cannot open a source from {type(spec).__name__}; pass an index, path, URL, pipeline or iterable of frames")
