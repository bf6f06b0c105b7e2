"""`edgedet track` / `runtime.commands.track.track()`: detect, follow and count objects in a video or stream.

    edgedet track --model model.xml --source traffic.mp4 --line 0 400 1280 400
    edgedet track --model model.onnx --source 0 --zone 100,300 600,300 600,700 100,700 --show

ByteTrack (runtime.track) gives every object a stable `track_id`; writes under a fresh
runs/track/N an annotated video (boxes labelled #id, short trails, line and zone counts),
<stem>.jsonl (one line per frame, each detection with its track_id) and counts.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
from tqdm import tqdm

from runtime.capture import open_source
from runtime.commands.common import add_model_arguments, lower_score_floor, say_defaults, source_arg
from runtime.models import load_model
from runtime.paths import next_run_dir
from runtime.serve.cli_options import add_token_arguments, server_options
from runtime.track import ByteTracker, LineCounter, PolygonZone, Trails, TrackerConfig, draw_line, draw_tracks, draw_zone, tracker_config


def track(model: Any, source: Any, conf: Optional[float] = None, imgsz: Optional[Sequence[int]] = None,
          line: Optional[Sequence[float]] = None, zone: Optional[Sequence[Sequence[float]]] = None, anchor: str = "bottom_center",
          tracker: Optional[TrackerConfig] = None, save: bool = True, show: bool = False, project: str = "runs",
          classes=None, backend: str = "auto", device: str = "CPU", max_frames: int = 0, quiet: bool = False,
          serve: Optional[str] = None, host: Optional[str] = None, token: Optional[str] = None,
          token_file: Optional[str] = None, allowed_hosts: Sequence[str] = (), max_viewers: int = 8, dedup_iou: Optional[float] = None,
          tracker_options: Optional[Dict[str, Any]] = None, **options: Any) -> Dict[str, Any]:
    """Track objects through `source`; returns {"dir", "frames", "tracks", "line": {...}, "zone": {...}, "fps"}.

    conf: the score threshold (None = the manifest's recommendation, as `predict` and `run`): detections at or
    above it start and continue tracks; ByteTrack's second stage also sees weaker ones down to the tracker's
    low threshold. line: x0, y0, x1, y1 in frame pixels; zone: polygon points [(x, y), ...].
    tracker: ByteTrack thresholds (None = derived from the score threshold, `tracker_config`).
    serve: "[HOST:]PORT" of a live view in the browser (runtime.serve; `host` binds beyond loopback).
    """
    if line is not None and len(line) != 4:
        raise ValueError(f"line needs 4 numbers x0 y0 x1 y1, got {len(line)}")
    counter = LineCounter(line[:2], line[2:], anchor) if line is not None else None
    region = PolygonZone(zone, anchor) if zone is not None else None
    detector = load_model(model, imgsz=imgsz, conf=conf, classes=classes, backend=backend, device=device,
                          dedup_iou=dedup_iou, **options)
    try:
        tracker = tracker or tracker_config(detector.conf, **(tracker_options or {}))
        say_defaults(detector, quiet)
        if not quiet:
            print(f"tracker: tracks start at score {tracker.new_track_thresh:.3g}, continue at {tracker.high_thresh:.3g} "
                  f"(second stage down to {tracker.low_thresh:.3g})", file=sys.stderr, flush=True)
        lower_score_floor(detector, tracker.low_thresh)  # the second stage needs the weak detections too
        src = open_source(source)
    except BaseException:
        detector.close()
        raise
    out = next_run_dir(project, "track")
    stem = Path(str(source)).stem if not str(source).isdigit() else f"camera{source}"
    bt, trails = ByteTracker(tracker), Trails()
    writer = show_sink = server = None
    frames, ids, t0 = 0, set(), time.perf_counter()
    try:
        if serve:
            from runtime.serve import LiveServer, parse_serve_address

            bind, port, remote = parse_serve_address(serve, host)
            server = LiveServer(bind, port, token=token, token_file=token_file, allowed_hosts=tuple(allowed_hosts), allow_remote=remote,
                                max_viewers=max_viewers,
                                stats=lambda: {"frames": frames, "fps": frames / max(time.perf_counter() - t0, 1e-9)}).start()
            server.announce()
        from runtime.pipeline import Result, StopPipeline
        from runtime.sinks import ShowSink, VideoSink

        writer = VideoSink(out / f"{stem}.mp4", fps=src.fps or 30.0, annotate=False) if save else None
        show_sink = ShowSink(overlay_fps=True) if show else None
        with open(out / f"{stem}.jsonl", "w", encoding="utf-8") as jl:
            for frame in tqdm(src, desc="track", unit="frame", disable=quiet or None):
                tracked = bt.update(detector(frame.image))
                trails.update(tracked)
                if server is not None:  # boxes labelled #track_id in the page
                    server(Result(frame, tracked, (time.perf_counter() - frame.timestamp) * 1e3))
                ids.update(tracked.track_ids.tolist())
                record = {"frame": frame.index, **tracked.to_dict()}
                if counter is not None:
                    went_in, went_out = counter.update(tracked)
                    record["line"] = {"in": went_in, "out": went_out, "in_total": counter.in_count, "out_total": counter.out_count}
                if region is not None:
                    inside = region.update(tracked)
                    record["zone"] = {"inside": tracked.track_ids[inside].tolist(), "count": region.current_count}
                jl.write(json.dumps(record) + "\n")
                if writer is not None or show_sink is not None:
                    image = draw_tracks(frame.image, tracked, trails)
                    if region is not None:
                        draw_zone(image, region)
                    if counter is not None:
                        draw_line(image, counter)
                    drawn = type(frame)(image, frame.index, frame.timestamp)
                    if writer is not None:
                        writer(Result(drawn, tracked, 0.0))
                    if show_sink is not None:  # already drawn: the window adds only its FPS overlay
                        try:
                            show_sink(Result(drawn, tracked.select(np.zeros(0, np.int64)), 0.0))
                        except StopPipeline:  # 'q' or Esc
                            frames += 1
                            break
                frames += 1
                if max_frames and frames >= max_frames:
                    break
    finally:
        src.close()
        detector.close()
        for sink in (writer, show_sink, server):
            if sink is not None:
                sink.close()
    if not frames:
        raise RuntimeError(f"{source} gave no frames: check the file or camera")
    summary: Dict[str, Any] = {"dir": str(out), "frames": frames, "tracks": len(ids),
                               "fps": round(frames / max(time.perf_counter() - t0, 1e-9), 2)}
    if counter is not None:
        summary["line"] = {"in": counter.in_count, "out": counter.out_count,
                           "in_by_class": dict(counter.in_by_class), "out_by_class": dict(counter.out_by_class)}
    if region is not None:
        summary["zone"] = {"total": region.total_count}
    (out / "counts.json").write_text(json.dumps(summary, indent=2))
    if not quiet:
        extra = (f", line in {counter.in_count} / out {counter.out_count}" if counter is not None else "") + \
                (f", {region.total_count} entered the zone" if region is not None else "")
        print(f"{frames} frames, {len(ids)} tracks{extra}, {summary['fps']:.1f} FPS; results in {out}")
    return summary


def _point(text: str):
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"zone points are X,Y pairs, got '{text}'") from None
    return (x, y)


class TrackCommand:
    name = "track"
    help = "track objects (ByteTrack) through a video, camera or stream; count line crossings and zone visits"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_model_arguments(parser)
        parser.add_argument("--source", required=True, type=source_arg, help="video file, camera index, URL or image folder")
        parser.add_argument("--line", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), default=None,
                            help="count crossings of this segment (frame pixels)")
        parser.add_argument("--zone", type=_point, nargs="+", metavar="X,Y", default=None, help="polygon zone to count objects in")
        parser.add_argument("--anchor", default="bottom_center", choices=["bottom_center", "center"], help="box point used for counting")
        parser.add_argument("--track-high", type=float, default=None, help="ByteTrack first-stage score (default: the score threshold)")
        parser.add_argument("--track-new", type=float, default=None, help="score that starts a new track (default: the score threshold)")
        parser.add_argument("--track-low", type=float, default=None,
                            help="ByteTrack second-stage floor: weaker detections that continue a track (default: 0.1, at most the threshold)")
        parser.add_argument("--track-buffer", type=int, default=30, help="frames a lost track is remembered (default 30)")
        parser.add_argument("--per-class", action="store_true", help="only same-class detections continue a track")
        parser.add_argument("--show", action="store_true", help="show a window ('q' or Esc quits)")
        parser.add_argument("--nosave", action="store_true", help="do not write the annotated video")
        parser.add_argument("--max-frames", type=int, default=0, help="stop after this many frames")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")
        parser.add_argument("--serve", default=None, metavar="[HOST:]PORT", help="live view in the browser on 127.0.0.1:PORT")
        parser.add_argument("--host", default=None, help="with --serve: bind this address (beyond loopback: a warning)")
        add_token_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        track(args.model, args.source, args.conf, args.imgsz, args.line, args.zone, args.anchor, None, not args.nosave,
              args.show, args.project, args.classes, args.backend, args.device, args.max_frames, args.quiet,
              serve=args.serve, host=args.host, dedup_iou=args.dedup_iou,
              tracker_options=dict(high=args.track_high, new=args.track_new, low=args.track_low,
                                   track_buffer=args.track_buffer, per_class=args.per_class),
              **server_options(args))
        return 0


TRACK_COMMAND = TrackCommand()

__all__ = ["track", "TRACK_COMMAND"]
