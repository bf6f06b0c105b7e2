"""Overlapped detection: a staged detector's preprocessing, engine call and postprocessing on three threads.

    preprocess thread: take frames, `detector.prepare(detector.pad(chunk))`
    submit thread:     `detector.submit(feeds)` (an async engine returns at once and runs on)
    collect thread:    `detector.collect(handle)`, `detector.finish(...)`, hand the Detections on

So frame k+1 is preprocessed while the engine runs frame k and frame k-1 is postprocessed. Each
stage is one thread reading FIFO queues: results come out in the order frames went in, and equal
`detector.batch` on the same frames (same stages, same chunks). At most `detector.max_in_flight`
engine calls are submitted and not yet collected; a chunk is taken for preprocessing only when the
engine has taken the previous one (up to `room` prepared chunks wait), so a live source's
newest-frame slot decides what is processed as late as possible.

A detector is staged when it has STAGED_API (a `runtime.Detector` does); the pipelines fall back to
calling it whole on one thread otherwise.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

log = logging.getLogger(__name__)

STAGED_API = ("prepare", "pad", "submit", "collect", "finish")
_END = object()

# take() -> (payloads, images) aligned lists for the next engine call(s), or None at the end / on a stop.
Take = Callable[[], Optional[Tuple[List[Any], List[Any]]]]
# deliver(payloads, detections, timings_ms) -> False when the consumer stopped.
Deliver = Callable[[List[Any], List[Any], Dict[str, float]], bool]


def get_unless_stopped(q: "queue.Queue[Any]", stop: threading.Event, end: Any) -> Any:
    """The next item of `q`, or `end` once `stop` is set (polled every 0.05 s while waiting)."""
    while not stop.is_set():
        try:
            return q.get(timeout=0.05)
        except queue.Empty:
            continue
    return end


def acquire_unless_stopped(semaphore: threading.Semaphore, stop: threading.Event) -> bool:
    """Acquire `semaphore`; False once `stop` is set first."""
    while not stop.is_set():
        if semaphore.acquire(timeout=0.05):
            return True
    return False


def is_staged(detector: Any) -> bool:
    """Has the stages, and a call is exactly them: a subclass that changes `__call__` or `batch` (adds a step
    after detection, say) is run whole, so what it adds is not skipped."""
    if not all(callable(getattr(detector, name, None)) for name in STAGED_API):
        return False
    mro = type(detector).__mro__
    below = mro[:next((i for i, c in enumerate(mro) if "prepare" in vars(c)), 0)]  # subclasses of the stages' class
    return not any(name in vars(c) for c in below for name in ("__call__", "batch"))


class OverlappedDetect:
    """The three detection loops of one pipeline. stop: the pipeline's stop flag (every wait polls it)."""

    def __init__(self, detector: Any, stop: threading.Event, room: int = 1):
        self.detector = detector
        self._stop = stop
        self._chunk = int(getattr(detector, "chunk", 0) or 0)  # the artifact's batch limit (0 = any)
        self._prepared: "queue.Queue[Any]" = queue.Queue()  # bounded by the room semaphore
        self._room = threading.Semaphore(max(1, int(room)))
        self._submitted: "queue.Queue[Any]" = queue.Queue()  # bounded by the in-flight semaphore
        self._in_flight = threading.Semaphore(max(1, int(getattr(detector, "max_in_flight", 1))))

    def loops(self, take: Take, deliver: Deliver, on_end: Callable[[], None]) -> List[Tuple[str, Callable[[], None]]]:
        """(thread name, loop) in pipeline order; on_end runs when the collect loop ends (for any reason)."""
        return [("preprocess", lambda: self._prepare_loop(take)), ("submit", self._submit_loop),
                ("postprocess", lambda: self._collect_loop(deliver, on_end))]

    def _acquire(self, semaphore: threading.Semaphore) -> bool:
        return acquire_unless_stopped(semaphore, self._stop)

    def _get(self, q: "queue.Queue[Any]") -> Any:
        return get_unless_stopped(q, self._stop, _END)

    def _prepare_loop(self, take: Take) -> None:
        det = self.detector
        try:
            while self._acquire(self._room):
                job = take()
                if job is None:
                    return
                payloads, images = job
                step = self._chunk or len(images) or 1
                for start in range(0, len(images), step):
                    if start and not self._acquire(self._room):  # the first chunk has its room already
                        return
                    chunk = images[start:start + step]
                    t0 = time.perf_counter()
                    feeds, infos = det.prepare(det.pad(chunk))
                    prep_ms = (time.perf_counter() - t0) * 1e3
                    self._prepared.put((payloads[start:start + step], feeds, infos, len(chunk), prep_ms))
        finally:
            self._prepared.put(_END)

    def _submit_loop(self) -> None:
        try:
            while True:
                item = self._get(self._prepared)
                if item is _END or not self._acquire(self._in_flight):
                    return
                payloads, feeds, infos, count, prep_ms = item
                t0 = time.perf_counter()
                handle = self.detector.submit(feeds)
                self._submitted.put((payloads, handle, infos, count, prep_ms, (time.perf_counter() - t0) * 1e3))
                self._room.release()  # only now: the next frame is taken while this one runs, as fresh as can be
        finally:
            self._submitted.put(_END)

    def _collect_loop(self, deliver: Deliver, on_end: Callable[[], None]) -> None:
        try:
            while True:
                item = self._get(self._submitted)
                if item is _END:
                    return
                payloads, handle, infos, count, prep_ms, submit_ms = item
                t0 = time.perf_counter()
                try:
                    outputs = self.detector.collect(handle)
                finally:
                    self._in_flight.release()
                t1 = time.perf_counter()
                dets = self.detector.finish(outputs, infos, count)
                t2 = time.perf_counter()
                # infer: time spent in the engine's submit and wait (an async engine's run overlaps the other stages)
                timings = {"preprocess": prep_ms, "infer": submit_ms + (t1 - t0) * 1e3, "postprocess": (t2 - t1) * 1e3}
                for d in dets:
                    d.timings_ms.update(timings)
                if not deliver(payloads, dets, timings):
                    return
        finally:
            on_end()

    def settle(self) -> None:
        """After the threads stopped: wait for engine calls still running, so the detector's requests are free again."""
        while True:
            try:
                item = self._submitted.get_nowait()
            except queue.Empty:
                return
            if item is not _END:
                try:
                    self.detector.collect(item[1])
                except Exception as e:  # closing; the run's own error, if any, is raised by the pipeline
                    log.debug("engine call in flight at close failed: %s", e)
