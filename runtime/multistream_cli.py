"""`edgedet run` with several sources: one batched engine for many cameras.

    edgedet run --model m.xml --source 0 --source rtsp://cam2/stream --source "nvarguscamerasrc ! ..." --save out/
    edgedet run --model m.xml --sources cameras.txt --json all.jsonl

A sources file has one source per line, `name=spec` or just `spec` (named stream0, stream1, ...);
blank lines and `#` comments are ignored. `--save DIR/` writes one annotated video per stream
(`DIR/<name>.mp4`), `--save file.mp4` one mosaic video of all streams; `--json` writes one
JSON-lines file whose records name their stream; `--show` shows the mosaic in a window.
"""
from __future__ import annotations

import argparse
import contextlib
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import cv2

from runtime.commands.common import say_defaults
from runtime.detector import Detector
from runtime.run_loop import check_outputs, drive, model_inputs
from runtime.mosaic import MosaicSink
from runtime.multistream import MultiStreamPipeline, format_multistream_summary
from runtime.sinks import JsonLinesSink, ShowSink, VideoSink

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")


def _default_name(spec: Any, index: int, taken: set) -> str:
    text = str(spec)
    if isinstance(spec, int) or text.isdigit():
        base = f"cam{text}"
    elif "!" in text or "://" in text:
        base = f"stream{index}"
    else:
        base = Path(text).stem or f"stream{index}"
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", base)
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def parse_sources(specs: Sequence[Any], sources_file: Optional[str] = None) -> Dict[str, Any]:
    """--source values and a sources file -> {unique stream name: spec} (camera indices as int)."""
    entries: List[tuple] = [(None, s) for s in specs]
    if sources_file:
        path = Path(sources_file)
        if not path.is_file():
            raise FileNotFoundError(f"sources file not found: {path} (one source per line: name=spec or spec)")
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, spec = line.partition("=")
            # "name=spec" unless the '=' belongs to the spec (URL query, GStreamer property)
            if sep and re.fullmatch(r"[A-Za-z0-9_.-]+", name.strip()) and "://" not in name and "!" not in name:
                entries.append((name.strip(), spec.strip()))
            else:
                entries.append((None, line))
    if not entries:
        raise ValueError("no sources: give --source (several times) or --sources FILE")
    out: Dict[str, Any] = {}
    for i, (name, spec) in enumerate(entries):
        spec = int(spec) if isinstance(spec, str) and spec.strip().isdigit() else spec
        if name is not None and name in out:
            raise ValueError(f"stream name '{name}' appears twice in {sources_file}")
        out[name or _default_name(spec, i, set(out))] = spec
    return out


class _Window:
    def __init__(self, name: str = "edgedet"):
        self.sink = ShowSink(name, overlay_fps=False)  # fails here (no display / headless OpenCV) with a clear message

    def __call__(self, image) -> None:
        cv2.imshow(self.sink.window, image)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            from runtime.pipeline import StopPipeline

            raise StopPipeline

    def close(self) -> None:
        self.sink.close()


class _MosaicVideo:
    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.writer = path, fps, None

    def __call__(self, image) -> None:
        if self.writer is None:
            h, w = image.shape[:2]
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self.writer.isOpened():
                raise RuntimeError(f"cannot write video {self.path}; try a .avi file")
        self.writer.write(image)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def run_multistream(args: argparse.Namespace, sources: Dict[str, Any]) -> int:
    """The multi-source branch of `edgedet run` (same arguments)."""
    check_outputs([args.save, args.json], [*sources.values(), *model_inputs(args)])  # before opening anything
    options = {"threads": args.threads} if getattr(args, "threads", 0) else {}
    names = list(sources)
    per_stream: Dict[str, list] = {n: [] for n in names}
    shared: List[Any] = []
    with contextlib.ExitStack() as undo:
        if args.show:
            shared.append(MosaicSink(names, _Window(), min_interval_s=1 / 30))
            undo.callback(shared[-1].close)
        detector = Detector(args.model, backend=args.backend, device=args.device, conf=args.conf, classes=args.classes,
                            dedup_iou=getattr(args, "dedup_iou", None), **options)
        undo.callback(detector.close)
        if args.save:
            save = Path(args.save)
            if save.suffix.lower() in VIDEO_SUFFIXES:
                save.parent.mkdir(parents=True, exist_ok=True)
                shared.append(MosaicSink(names, _MosaicVideo(save, 15.0)))
            else:
                save.mkdir(parents=True, exist_ok=True)
                for n in names:
                    target = save / f"{n}.mp4"
                    if target.exists():
                        raise ValueError(f"{target} exists; choose another --save folder (nothing was overwritten)")
                    per_stream[n].append(VideoSink(target, fps=15.0))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            shared.append(JsonLinesSink(args.json))
        step = None
        if getattr(args, "track", False):
            from runtime.commands.common import lower_score_floor
            from runtime.multistream import per_stream as one_per_stream
            from runtime.track import ByteTracker, tracker_config

            tracker = tracker_config(detector.conf)  # the thresholds `edgedet track` derives
            lower_score_floor(detector, tracker.low_thresh)
            step = one_per_stream(lambda: ByteTracker(tracker))
        pipe = MultiStreamPipeline(sources, detector, sinks=per_stream, shared_sinks=shared, step=step,
                                   max_batch=args.batch, max_wait_ms=args.max_wait_ms, live=args.live or None)
        undo.pop_all()
    if not args.quiet:
        print(f"{detector} <- {len(names)} streams: {', '.join(names)}", file=sys.stderr)
        say_defaults(detector)

    def progress(n: int, result: Any) -> str:
        s = pipe.stats()
        return f"{n} frames | {s['fps']:.1f} FPS total | mean batch {s['batch_mean']:.2f}"

    return drive(pipe, detector, progress, format_multistream_summary, args.max_frames, args.quiet)
