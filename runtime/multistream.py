"""Many sources, one engine: per-stream capture threads, a batcher, per-stream sinks.

    pipe = MultiStreamPipeline({"door": 0, "yard": "rtsp://...", "csi": jetson_csi_pipeline()}, detector,
                               sinks={"door": [VideoSink("door.mp4")]}, shared_sinks=[JsonLinesSink("all.jsonl")])
    stats = pipe.run()          # or: for result in pipe: ... (result.stream names the source)

Each source is read on its own thread into a one-frame slot. A live source keeps only its
newest frame (a replaced frame counts as dropped); a file source waits until its frame was
taken, so every frame is processed. The batcher takes one frame from every stream that has
one, waits at most `max_wait_ms` for the other running streams (never for a finished or failed
one), and runs them through `detector.batch(...)` as one engine call, chunked to the
artifact's batch limit (with a `runtime.Detector`, the next batch is preprocessed while the
engine runs this one and the last is postprocessed: `runtime.overlap`). Results go to the
stream's own sinks and to the shared sinks on one sink thread, in order per stream. A stream
whose source fails is reopened (when it was given as a spec, not an open Source, and is live) up
to `reconnects` times without stalling the others.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from runtime.capture import Frame, Source, open_source
from runtime.overlap import OverlappedDetect, is_staged
from runtime.pipeline import _END, Result, ThreadedStages
from runtime.types import Detections

log = logging.getLogger(__name__)

Sink = Callable[[Result], Any]
# Per-stream step after detection (a tracker, a zone counter): (stream, frame, detections) -> detections.
StreamStep = Callable[[str, Frame, Detections], Detections]


@dataclass
class StreamResult(Result):
    """A `Result` that names its stream."""

    stream: str = ""


def per_stream(factory: Callable[[], Any]) -> StreamStep:
    """A `step` keeping one `factory()` object per stream (a ByteTracker, a zone counter) and calling its
    `update(detections)` with that stream's results, in frame order: each stream has its own tracks."""
    objects: Dict[str, Any] = {}

    def step(stream: str, frame: Frame, dets: Detections) -> Detections:
        if stream not in objects:
            objects[stream] = factory()
        out = objects[stream].update(dets)
        return out if isinstance(out, Detections) else dets

    step.objects = objects  # type: ignore[attr-defined]
    return step


def _percentiles(values: Sequence[float]) -> Dict[str, float]:
    v = np.asarray(list(values), np.float64)
    if not len(v):
        return {}
    return {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "mean": float(v.mean())}


class _Stream:
    """One source, its slot (the newest unprocessed frame) and its counters."""

    def __init__(self, name: str, spec: Any, live: Optional[bool], history: int):
        self.name, self.spec, self.live_option = name, spec, live
        self.source: Optional[Source] = None
        self.live = False
        self.frame: Optional[Frame] = None
        self.done = False  # source ended or failed for good
        self.error: Optional[str] = None
        self.read = self.processed = self.slot_dropped = self.reconnects = 0
        self.source_dropped = 0  # drops inside earlier (reopened) sources
        self.latency: Deque[float] = deque(maxlen=history)
        self.t_first = self.t_last = 0.0

    def open(self) -> None:
        self.source = self.spec if isinstance(self.spec, Source) else open_source(self.spec, live=self.live_option)
        self.live = self.source.is_live

    @property
    def dropped(self) -> int:
        return self.slot_dropped + self.source_dropped + (self.source.dropped if self.source is not None else 0)


class MultiStreamPipeline(ThreadedStages):
    """sources: {name: spec} or [spec, ...] (names "stream0", ...); spec is anything `open_source` takes.

    detector: has `batch(frames) -> [Detections]` (a `runtime.Detector`) or is a plain callable
    frame -> Detections (then frames run one by one). sinks: {name: [sink, ...]} or a factory
    name -> [sink, ...]; shared_sinks see every stream's results. max_batch: frames per engine
    call (0 = one per stream). max_wait_ms: how long a partial batch waits for the other live
    streams. step: per-stream callable run on each result (e.g. one tracker per stream). overlap: run a staged
    detector's preprocessing, engine call and postprocessing of consecutive batches on their own threads
    (`runtime.overlap`; False: one batcher thread calls `detector.batch`).
    """

    def __init__(self, sources: Union[Mapping[str, Any], Sequence[Any]], detector: Any,
                 sinks: Union[Mapping[str, Sequence[Sink]], Callable[[str], Sequence[Sink]], None] = None,
                 shared_sinks: Sequence[Sink] = (), max_batch: int = 0, max_wait_ms: float = 5.0,
                 live: Optional[bool] = None, reconnects: int = 3, retry_delay: float = 0.5,
                 step: Optional[StreamStep] = None, queue_size: int = 8, history: int = 2000, overlap: bool = True):
        items = list(sources.items()) if isinstance(sources, Mapping) else [(f"stream{i}", s) for i, s in enumerate(sources)]
        if not items:
            raise ValueError("MultiStreamPipeline needs at least one source")
        names = [str(n) for n, _ in items]
        if len(set(names)) != len(names):
            raise ValueError(f"stream names must be unique, got {names}")
        self.streams: List[_Stream] = [_Stream(n, s, live, history) for n, s in zip(names, (s for _, s in items))]
        self.detector = detector
        self._batch_fn = getattr(detector, "batch", None)
        if sinks is None:
            self.sinks: Dict[str, List[Sink]] = {n: [] for n in names}
        elif callable(sinks) and not isinstance(sinks, Mapping):
            self.sinks = {n: list(sinks(n)) for n in names}
        else:
            unknown = set(sinks) - set(names)
            if unknown:
                raise ValueError(f"sinks given for unknown streams {sorted(unknown)}; streams are {names}")
            self.sinks = {n: list(sinks.get(n, ())) for n in names}
        self.shared_sinks = list(shared_sinks)
        self.max_batch = int(max_batch) if max_batch and max_batch > 0 else len(names)
        self.max_wait = max(0.0, float(max_wait_ms)) / 1e3
        self.reconnect_limit, self.retry_delay = int(reconnects), float(retry_delay)
        self.step = step
        self._cond = threading.Condition()
        self._out: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, int(queue_size)))
        self._init_stages(queue_size)
        # A staged detector (a runtime.Detector) runs batches as overlapped preprocess / engine / postprocess threads.
        self._overlapped = OverlappedDetect(detector, self._stop, room=1) if overlap and is_staged(detector) else None
        self._detect_ms: Deque[float] = deque(maxlen=history)
        self._batch_sizes: Deque[int] = deque(maxlen=history)
        self.frames = 0
        self._t_start = self._t_last = 0.0
        self._rr = 0  # round-robin start, so no stream is always cut off by max_batch
        # Open everything first: a camera that will not open fails here, before any thread starts.
        opened: List[_Stream] = []
        try:
            for s in self.streams:
                s.open()
                opened.append(s)
        except BaseException:
            for s in opened:
                s.source.close()
            raise

    # -- threads -------------------------------------------------------------------------
    def start(self) -> "MultiStreamPipeline":
        if self._threads:
            raise RuntimeError("pipeline already started; create a new MultiStreamPipeline to run again")
        self._t_start = time.perf_counter()
        loops = [(f"capture-{s.name}", lambda s=s: self._capture_loop(s)) for s in self.streams]
        if self._overlapped is None:
            detect = [("batcher", self._batch_loop)]
        else:  # the batcher is the preprocess thread's take()
            detect = self._overlapped.loops(self._take_job, self._deliver,
                                            on_end=lambda: self._put(self._out, _END, force=self._stop.is_set()))
        self._start_stages(loops + detect + [("sinks", self._sink_loop)])
        return self

    def _wake(self) -> None:
        with self._cond:  # capture loops wait for their slot, the batcher for frames
            self._cond.notify_all()

    def _capture_loop(self, s: _Stream) -> None:
        try:
            while not self._stop.is_set():
                try:
                    frame = s.source.read(timeout=0.1)
                except TimeoutError:
                    continue
                except Exception as e:  # a lost camera/stream: reopen it, the others go on
                    if not self._reopen(s, e):
                        return
                    continue
                if frame is None:
                    return
                with self._cond:
                    s.read += 1
                    if s.live:
                        if s.frame is not None:
                            s.slot_dropped += 1
                    else:
                        while s.frame is not None and not self._stop.is_set():
                            self._cond.wait(0.05)
                    s.frame = frame
                    self._cond.notify_all()
        finally:
            with self._cond:
                s.done = True
                self._cond.notify_all()

    def _reopen(self, s: _Stream, error: BaseException) -> bool:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        # Only live sources are reopened: reopening a file would replay it from the start.
        if isinstance(s.spec, Source) or not s.live or s.reconnects >= self.reconnect_limit:
            s.error = reason
            log.warning("stream %s failed (%s); the other streams go on", s.name, reason)
            return False
        s.reconnects += 1
        log.warning("stream %s failed (%s); reopening (%d/%d)", s.name, reason, s.reconnects, self.reconnect_limit)
        s.source_dropped += s.source.dropped
        s.source.close()
        while not self._stop.wait(self.retry_delay):
            try:
                s.open()
                return True
            except Exception as e:
                if s.reconnects >= self.reconnect_limit:
                    s.error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    log.warning("stream %s could not be reopened (%s); the other streams go on", s.name, s.error)
                    return False
                s.reconnects += 1
        return False

    def _take_batch(self) -> Optional[List[_Stream]]:
        """Streams whose frames go into the next engine call; None when every stream is done."""
        with self._cond:
            deadline = None
            while not self._stop.is_set():
                ready = [s for s in self.streams if s.frame is not None]
                waiting = [s for s in self.streams if s.frame is None and not s.done]
                if ready and (len(ready) >= self.max_batch or not waiting):
                    break
                if ready:
                    deadline = deadline or time.perf_counter() + self.max_wait
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                    continue
                if all(s.done for s in self.streams):
                    return None
                self._cond.wait(0.05)
            else:
                return None
            n = len(self.streams)
            order = [self.streams[(self._rr + i) % n] for i in range(n)]
            self._rr = (self._rr + 1) % n
            return [s for s in order if s.frame is not None][: self.max_batch]

    def _take_frames(self) -> Optional[Tuple[List[_Stream], List[Frame]]]:
        """The next batch's frames (their slots emptied), or None when every stream is done."""
        batch = self._take_batch()
        if batch is None:
            return None
        with self._cond:
            frames = [s.frame for s in batch]
            for s in batch:
                s.frame = None
            self._cond.notify_all()  # file sources waiting for their slot
        return batch, frames

    def _take_job(self) -> Optional[tuple]:
        taken = self._take_frames()
        if taken is None:
            return None
        batch, frames = taken
        return list(zip(batch, frames)), [f.image for f in frames]

    def _deliver(self, items: List[tuple], dets: List[Detections], timings: Dict[str, float]) -> bool:
        t = time.perf_counter()
        self._detect_ms.append(sum(timings.values()))
        self._batch_sizes.append(len(items))
        return self._route([s for s, _ in items], [f for _, f in items], dets, t)

    def _route(self, streams: List[_Stream], frames: List[Frame], dets: List[Detections], t: float) -> bool:
        """Each stream's step, then its result to the sink thread (False when the pipeline stopped)."""
        for s, frame, d in zip(streams, frames, dets):
            if self.step is not None:
                d = self.step(s.name, frame, d)
            if not self._put(self._out, StreamResult(frame, d, (t - frame.timestamp) * 1e3, s.name)):
                return False
        return True

    def _batch_loop(self) -> None:
        try:
            while True:
                taken = self._take_frames()
                if taken is None:
                    return
                batch, frames = taken
                t0 = time.perf_counter()
                if self._batch_fn is not None:
                    dets = self._batch_fn([f.image for f in frames])
                else:
                    dets = [self.detector(f.image) for f in frames]
                t1 = time.perf_counter()
                self._detect_ms.append((t1 - t0) * 1e3)
                self._batch_sizes.append(len(frames))
                if not self._route(batch, frames, dets, t1):
                    return
        finally:
            self._put(self._out, _END, force=self._stop.is_set())

    def _sink_loop(self) -> None:
        by_name = {s.name: s for s in self.streams}
        while True:
            try:
                result = self._out.get(timeout=0.05)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if result is _END:
                return
            for sink in self.sinks[result.stream] + self.shared_sinks:
                sink(result)
            t = time.perf_counter()
            s = by_name[result.stream]
            with self._lock:
                s.processed += 1
                s.latency.append((t - result.frame.timestamp) * 1e3)
                s.t_first = s.t_first or t
                s.t_last = t
                self.frames += 1
                self._t_last = t
            if self._iterating and not self._put(self._results, result):
                return

    # -- public --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop and join every thread, then close sources and sinks; safe to call twice."""
        if not self._stop_threads():
            return
        if self._overlapped is not None:
            self._overlapped.settle()
        for s in self.streams:
            if s.source is not None:
                s.source.close()
        self._close_sinks([x for sinks in self.sinks.values() for x in sinks] + self.shared_sinks)

    @property
    def overlap(self) -> bool:
        """Whether batches run as overlapped preprocess / engine / postprocess threads."""
        return self._overlapped is not None

    def stats(self) -> Dict[str, Any]:
        """Overall frames/fps/batch and detect latency, plus per stream: read, processed, dropped,
        unprocessed (read but never run, at a stop), fps, latency p50/p95, reconnects, error."""
        with self._lock:
            elapsed = max(0.0, (self._t_last or time.perf_counter()) - self._t_start) if self._t_start else 0.0
            per_stream = {}
            for s in self.streams:
                span = s.t_last - self._t_start if s.t_last else 0.0
                per_stream[s.name] = {
                    "read": s.read, "processed": s.processed, "dropped": s.dropped,
                    "unprocessed": max(0, s.read - s.processed - s.slot_dropped),
                    "fps": s.processed / span if span > 0 else 0.0, "latency_ms": _percentiles(s.latency),
                    "live": s.live, "reconnects": s.reconnects, "error": s.error,
                }
            sizes = list(self._batch_sizes)
            return {"frames": self.frames, "fps": self.frames / elapsed if elapsed > 0 else 0.0, "elapsed_s": elapsed,
                    "streams": per_stream, "batch_mean": float(np.mean(sizes)) if sizes else 0.0,
                    "engine_calls": len(sizes), "detect_ms": _percentiles(self._detect_ms)}


def format_multistream_summary(stats: Dict[str, Any]) -> str:
    """Stats as a table: one row per stream, then the total."""
    lines = [f"{'stream':<16}{'processed':>10}{'dropped':>9}{'fps':>8}{'p50 ms':>9}{'p95 ms':>9}  error"]
    for name, s in stats["streams"].items():
        lat = s["latency_ms"]
        lines.append(f"{name[:15]:<16}{s['processed']:>10}{s['dropped']:>9}{s['fps']:>8.1f}"
                     f"{lat.get('p50', 0.0):>9.1f}{lat.get('p95', 0.0):>9.1f}  {s['error'] or ''}")
    det = stats["detect_ms"]
    lines.append(f"total {stats['frames']} frames, {stats['fps']:.1f} FPS over {stats['elapsed_s']:.1f} s; "
                 f"{stats['engine_calls']} engine calls, mean batch {stats['batch_mean']:.2f}, "
                 f"engine call p50 {det.get('p50', 0.0):.1f} ms")
    return "\n".join(lines)
