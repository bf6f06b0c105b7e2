"""Threaded capture -> detect -> sinks pipeline with bounded queues and per-stage latency stats.

Threads joined by bounded queues. With a `Detector` (anything with its `prepare` / `submit` /
`collect` / `finish` stages) detection is split over three threads, so capture, preprocessing,
the engine call and postprocessing of consecutive frames overlap:

    capture -> preprocess -> submit (engine starts) -> collect + postprocess -> sinks

An engine with asynchronous requests (OpenVINO, TensorRT, ONNX Runtime's `run_async`) runs
while the submit thread already waits to start the next frame; up to `detector.max_in_flight`
calls are outstanding. Any other callable frame -> Detections runs whole on one detect thread.
Every stage is one thread reading FIFO queues, so results come out in frame order and equal
what the detector gives frame by frame.

For a live source the capture queue holds one frame and a newer frame replaces an unprocessed
one; a frame is taken for preprocessing only when the engine has taken the one before, so it is
as fresh as possible and latency stays bounded by about two detector calls however slow the
detector is. For files every frame is processed in order (a full queue blocks the reader
instead). `close()` (also on Ctrl-C, an error or leaving a `for` loop early) stops and joins
every thread and settles engine calls still in flight.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence

import numpy as np

from runtime import opencv_threads
from runtime.capture import Frame, Source, open_source
from runtime.overlap import OverlappedDetect, get_unless_stopped, is_staged
from runtime.types import Detections

log = logging.getLogger(__name__)

_END = object()  # end-of-stream marker passed down the queues
STAGES = ("preprocess", "infer", "postprocess", "detect", "sinks", "end_to_end")


class StopPipeline(Exception):
    """Raised by a sink (e.g. the window's 'q' key) to end the run normally."""


@dataclass
class Result:
    """A frame with its detections; latency_ms = capture -> detections ready."""

    frame: Frame
    detections: Detections
    latency_ms: float


class ThreadedStages:
    """What a threaded pipeline (one stream or many) shares: its stop flag, error hand-over, stage
    threads, the results queue `for` loops read, and the shut-down order.

    Subclasses set the attributes in `_init_stages`, start their loops with `_start_stages`, and
    close their own sources after `_stop_threads()`; `_wake()` rouses loops waiting on a condition.
    """

    def _init_stages(self, queue_size: int, opencv_threads: Optional[int] = 1) -> None:
        self._opencv_threads = opencv_threads  # OpenCV's pool size while the stages run (runtime.opencv_threads)
        self._opencv_held = False
        self._results: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, int(queue_size)))
        self._stop = threading.Event()
        self._sinks_done = threading.Event()
        self._lock = threading.Lock()
        self._error: Optional[BaseException] = None
        self._threads: List[threading.Thread] = []
        self._iterating = False
        self._closed = False

    def _start_stages(self, loops: Sequence[tuple]) -> None:
        """loops: (name, callable) in pipeline order; the last one is the sink stage."""
        if self._threads:
            raise RuntimeError(f"{type(self).__name__} already started; create a new one to run again")
        self._opencv_held = opencv_threads.hold(self._opencv_threads)
        for i, (name, loop) in enumerate(loops):
            t = threading.Thread(target=self._guard, args=(loop, i == len(loops) - 1), name=f"edgedet-{name}", daemon=True)
            self._threads.append(t)
            t.start()

    def _wake(self) -> None:
        """Rouse loops that wait on something other than the queues (none here)."""

    def _guard(self, loop: Callable[[], None], last_stage: bool) -> None:
        try:
            loop()
        except StopPipeline:
            self._stop.set()
        except BaseException as e:
            with self._lock:
                self._error = self._error or e
            self._stop.set()
        finally:
            self._wake()
            if last_stage:
                self._sinks_done.set()
                if self._iterating:
                    self._put(self._results, _END, force=True)

    def _put(self, q: "queue.Queue[Any]", item: Any, force: bool = False) -> bool:
        """Blocking put that gives up when the pipeline stops (force: drop the oldest item instead)."""
        while force or not self._stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                if force:
                    try:
                        q.get_nowait()
                    except queue.Empty:
                        pass
        return False

    def __iter__(self) -> Iterator[Any]:
        """Yield results as they complete; leaving the loop early closes the pipeline."""
        self._iterating = True
        self.start()
        try:
            while True:
                try:
                    item = self._results.get(timeout=0.1)
                except queue.Empty:
                    if self._sinks_done.is_set() and self._results.empty():
                        break
                    continue
                if item is _END:
                    break
                yield item
        finally:
            self.close()
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _stop_threads(self) -> bool:
        """Stop and join every stage thread; False when already closed (close() is safe to call twice)."""
        if self._closed:
            return False
        self._closed = True
        self._stop.set()
        self._wake()
        for t in self._threads:  # every loop polls the stop flag at least every 0.1 s
            if t is not threading.current_thread():
                t.join(timeout=5.0)
                if t.is_alive():
                    log.warning("pipeline thread %s did not stop within 5 s", t.name)
        if self._opencv_held:
            opencv_threads.release()
            self._opencv_held = False
        return True

    @staticmethod
    def _close_sinks(sinks: Sequence[Any]) -> None:
        for sink in sinks:
            close = getattr(sink, "close", None)
            if callable(close):
                close()

    def run(self, duration_s: float = 0.0) -> Dict[str, Any]:
        """Process every source to its end (or for `duration_s` seconds when > 0, or until a sink raises
        StopPipeline / Ctrl-C); returns `stats()`."""
        self.start()
        end = time.perf_counter() + duration_s if duration_s else None
        try:
            # Not Thread.join: a Ctrl-C that interrupts join() leaves that thread looking alive forever (CPython < 3.13).
            while not self._sinks_done.wait(timeout=0.05) and not self._stop.is_set():
                if end is not None and time.perf_counter() >= end:
                    break
        finally:
            self.close()
        self._raise_error()
        return self.stats()

    def stats(self) -> Dict[str, Any]:
        raise NotImplementedError

    def start(self) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Pipeline(ThreadedStages):
    """source: anything `open_source` accepts (or a Source); detector: callable BGR frame -> Detections.

    sinks: callables taking a Result (a `close()` method, if any, is called at the end; the
    pipeline owns them). queue_size: depth of the queues between stages for file sources.
    overlap: split a staged detector over preprocess / engine / postprocess threads (False: one
    detect thread calls `detector(image)`, as for a plain callable). opencv_threads: OpenCV's worker
    threads while the pipeline runs (default 1: the stages are the parallelism, and OpenCV's idle
    workers busy-wait on the engine's cores; None leaves OpenCV's setting alone); restored at close().
    """

    def __init__(self, source: Any, detector: Callable[[np.ndarray], Detections], sinks: Sequence[Callable[[Result], Any]] = (),
                 queue_size: int = 4, history: int = 2000, overlap: bool = True, opencv_threads: Optional[int] = 1):
        self.source = source if isinstance(source, Source) else open_source(source)
        self.detector = detector
        self.sinks = list(sinks)
        self.live = self.source.is_live
        depth = 1 if self.live else max(1, int(queue_size))
        self._q_in: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
        self._q_out: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
        self._init_stages(queue_size, opencv_threads)
        # A frame is taken for preprocessing only when the engine has taken the one before (a live frame stays in the
        # newest-frame slot until then, so the freshest one is processed).
        self._overlapped = OverlappedDetect(detector, self._stop, room=depth) if overlap and is_staged(detector) else None
        self._latency: Dict[str, Deque[float]] = {s: deque(maxlen=history) for s in STAGES}
        self.frames = 0
        self.queue_dropped = 0
        self._t_start = self._t_last = 0.0

    # -- threads -------------------------------------------------------------------------
    def start(self) -> "Pipeline":
        if self._threads:
            raise RuntimeError("pipeline already started; create a new Pipeline to run again")
        self._t_start = time.perf_counter()
        detect = ([("detect", self._detect_loop)] if self._overlapped is None else
                  self._overlapped.loops(self._take_frame, self._deliver, on_end=lambda: self._put(self._q_out, _END)))
        self._start_stages([("capture", self._capture_loop)] + detect + [("sinks", self._sink_loop)])
        return self

    def _get(self, q: "queue.Queue[Any]") -> Any:
        return get_unless_stopped(q, self._stop, _END)

    def _capture_loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    frame = self.source.read(timeout=0.1)
                except TimeoutError:
                    continue
                if frame is None:
                    break
                if self.live:
                    self._put_latest(frame)
                elif not self._put(self._q_in, frame):
                    return
        finally:
            self._put(self._q_in, _END)

    def _put_latest(self, frame: Frame) -> None:
        try:
            self._q_in.put_nowait(frame)
        except queue.Full:
            try:
                self._q_in.get_nowait()
                self.queue_dropped += 1
            except queue.Empty:
                pass
            self._q_in.put_nowait(frame)  # only this thread puts, so there is room now

    def _detect_loop(self) -> None:
        while True:
            frame = self._get(self._q_in)
            if frame is _END:
                break
            t0 = time.perf_counter()
            dets = self.detector(frame.image)
            t1 = time.perf_counter()
            self._record("detect", (t1 - t0) * 1e3)
            for stage in ("preprocess", "infer", "postprocess"):
                if stage in dets.timings_ms:
                    self._record(stage, dets.timings_ms[stage])
            if not self._put(self._q_out, Result(frame, dets, (t1 - frame.timestamp) * 1e3)):
                return
        self._put(self._q_out, _END)

    # -- overlapped detection: preprocess / submit / postprocess threads (runtime.overlap) ---------
    def _take_frame(self) -> Optional[tuple]:
        frame = self._get(self._q_in)
        return None if frame is _END else ([frame], [frame.image])

    def _deliver(self, frames: List[Frame], dets: List[Detections], timings: Dict[str, float]) -> bool:
        t = time.perf_counter()
        for stage, ms in timings.items():
            self._record(stage, ms)
        self._record("detect", sum(timings.values()))
        return all(self._put(self._q_out, Result(f, d, (t - f.timestamp) * 1e3)) for f, d in zip(frames, dets))

    def _sink_loop(self) -> None:
        while True:
            result = self._get(self._q_out)
            if result is _END:
                return
            t0 = time.perf_counter()
            for sink in self.sinks:
                sink(result)
            t1 = time.perf_counter()
            self._record("sinks", (t1 - t0) * 1e3)
            self._record("end_to_end", (t1 - result.frame.timestamp) * 1e3)
            with self._lock:
                self.frames += 1
                self._t_last = t1
            if self._iterating and not self._put(self._results, result):
                return

    def _record(self, stage: str, ms: float) -> None:
        self._latency[stage].append(float(ms))

    # -- public --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop and join every thread, close the source and the sinks; safe to call twice."""
        if not self._stop_threads():
            return
        if self._overlapped is not None:
            self._overlapped.settle()
        self.source.close()  # after the capture thread: never release a decoder mid-read
        self._close_sinks(self.sinks)

    @property
    def overlap(self) -> bool:
        """Whether detection runs as overlapped preprocess / engine / postprocess threads."""
        return self._overlapped is not None

    @property
    def dropped(self) -> int:
        """Frames captured but never processed (replaced by newer ones): live sources only."""
        return self.source.dropped + self.queue_dropped

    def stats(self) -> Dict[str, Any]:
        """frames, dropped, fps, elapsed_s, and latency_ms {stage: {p50, p95, mean}} over the last `history` frames."""
        with self._lock:
            frames, t_last = self.frames, self._t_last
        elapsed = max(0.0, (t_last or time.perf_counter()) - self._t_start) if self._t_start else 0.0
        latency = {}
        for stage, values in self._latency.items():
            v = np.asarray(list(values), np.float64)
            if len(v):
                latency[stage] = {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "mean": float(v.mean())}
        return {"frames": frames, "dropped": self.dropped, "skipped": len(getattr(self.source, "skipped", ())),
                "truncated": len(getattr(self.source, "truncated", ())), "fps": frames / elapsed if elapsed > 0 else 0.0,
                "elapsed_s": elapsed, "live": self.live, "latency_ms": latency}
