"""`edgedet run` / `edgedet-run`: a detector on a camera, video, folder, URL or GStreamer pipeline.

    edgedet run --model model.onnx --source 0 --show
    edgedet-run --model model.xml --device CPU --source clip.mp4 --save out.mp4 --json out.jsonl
    edgedet run --model model.xml --source 0 --source rtsp://cam2/live --save out/   # several streams, one engine

Shows a live progress line (frames, FPS, latency) on stderr and a per-stage summary at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path
from typing import Any, List, Optional

from runtime.capture import CaptureSource, open_source
from runtime.commands.common import add_threshold_arguments, say_defaults
from runtime.pipeline import Pipeline
from runtime.run_loop import check_outputs, drive, model_inputs
from runtime.serve.cli_options import add_serve_arguments, make_detector, source_options, start_server
from runtime.sinks import JsonLinesSink, ShowSink


def _source_arg(text: str) -> Any:
    # An existing file named like a camera index ("2024") is a file.
    return int(text) if text.strip().isdigit() and not Path(text).exists() else text


class _CheckAction(argparse.Action):
    """--check: print what this machine offers (Python, OpenCV and its GStreamer, engines) and exit, like --version."""

    def __init__(self, option_strings: List[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from runtime.environment import environment_report

        print(environment_report())
        parser.exit()


class RunCommand:
    name = "run"
    help = "run an exported detector on a camera, video, image folder, RTSP/HTTP URL or GStreamer pipeline"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--check", action=_CheckAction,
                            help="print the Python, which OpenCV is in use and whether it has GStreamer, and the engines; then exit")
        parser.add_argument("--model", required=True, help="exported artifact (.onnx, .xml, .engine) with its manifest")
        parser.add_argument("--source", action="append", type=_source_arg, default=None,
                            help="camera index, video/image file, folder, rtsp:// or http:// URL, or GStreamer pipeline "
                                 "(default 0); repeat for several streams batched into one engine")
        parser.add_argument("--sources", default=None, metavar="FILE",
                            help="file with one source per line (name=spec or spec): several streams, one engine")
        parser.add_argument("--batch", type=int, default=0, help="several streams: frames per engine call (0 = one per stream)")
        parser.add_argument("--track", action="store_true",
                            help="several streams: follow objects in each stream (ByteTrack, its own tracks per stream)")
        parser.add_argument("--max-wait-ms", type=float, default=5.0,
                            help="several streams: how long a partial batch waits for the other streams (default 5)")
        parser.add_argument("--backend", default="auto", help="auto (by file suffix), onnxruntime, openvino or tensorrt")
        parser.add_argument("--device", default="CPU", help="CPU, cuda, cuda:N, tensorrt (onnxruntime); CPU, GPU, NPU (openvino)")
        add_threshold_arguments(parser)
        parser.add_argument("--classes", type=int, nargs="+", default=None, help="keep only these class ids")
        parser.add_argument("--threads", type=int, default=0, help="engine CPU threads (0 = engine default)")
        parser.add_argument("--show", action="store_true", help="show a window ('q' or Esc quits)")
        parser.add_argument("--save", default=None,
                            help="write annotated output; the kind follows the path: pred.jpg (one image), out/ (an image "
                                 "per input), out.mp4 (video, frames letterboxed to one size)")
        parser.add_argument("--json", default=None, help="write one JSON line of detections per frame here")
        parser.add_argument("--live", action="store_true", help="play a video file at its fps as a live camera (drop stale frames)")
        parser.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0 = until the source ends)")
        parser.add_argument("--queue-size", type=int, default=4, help="queue depth between stages for file sources")
        parser.add_argument("--quiet", action="store_true", help="no progress line")
        add_serve_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        specs = args.source or ([] if args.sources else [0])
        if len(specs) > 1 or args.sources:
            from runtime.multistream_cli import parse_sources, run_multistream

            return run_multistream(args, parse_sources(specs, args.sources))
        if args.track:
            raise ValueError("--track applies to several streams; for one source use `edgedet track --model M --source S`")
        args.source = specs[0]
        options = {"threads": args.threads} if args.threads else {}
        check_outputs([args.save, args.json], [args.source, *model_inputs(args)])
        with contextlib.ExitStack() as undo:  # closes what was opened if a later step fails
            sinks: List[Any] = [ShowSink(overlay_fps=True)] if args.show else []  # first: fail before loading anything
            undo.callback(lambda: [s.close() for s in sinks])
            if args.save:
                from runtime.save import save_kind

                save_kind(args.save)  # an unknown suffix fails before the model loads
            detector = make_detector(args, options)
            undo.callback(detector.close)
            source = open_source(args.source, **source_options(args))
            undo.callback(source.close)
            server = start_server(args, detector)
            if server is not None:
                sinks.append(server)
            if args.save:
                from runtime.save import open_save_sink

                sinks.append(open_save_sink(args.save, args.source, fps=source.fps or 30.0))
            if args.json:  # its folder is made, as --save's is
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                sinks.append(JsonLinesSink(args.json))
            undo.pop_all()
        if not args.quiet:
            if isinstance(source, CaptureSource):  # cameras, streams, GStreamer: say which OpenCV reads them
                from runtime.environment import opencv_summary

                print(opencv_summary(), file=sys.stderr)
            print(f"{detector} <- {source}", file=sys.stderr)
            say_defaults(detector)
        pipeline = Pipeline(source, detector, sinks=sinks, queue_size=args.queue_size)
        if server is not None:
            server.stats_fn = pipeline.stats
        def progress(n: int, result: Any) -> str:
            s = pipeline.stats()
            e2e = s["latency_ms"].get("end_to_end", {}).get("p50", 0.0)
            return f"{n} frames | {s['fps']:.1f} FPS | latency p50 {e2e:.1f} ms | {len(result.detections)} objects"

        return drive(pipeline, detector, progress, format_summary, args.max_frames, args.quiet)


def format_summary(stats: dict) -> str:
    """Pipeline stats as a small table."""
    skipped = f"  skipped {stats['skipped']} unreadable" if stats.get("skipped") else ""
    skipped += f"  {stats['truncated']} truncated (named above)" if stats.get("truncated") else ""
    lines = [f"frames {stats['frames']}  dropped {stats['dropped']}{skipped}  fps {stats['fps']:.1f}  elapsed {stats['elapsed_s']:.1f} s",
             f"{'stage':<12}{'p50 ms':>10}{'p95 ms':>10}"]
    for stage, v in stats["latency_ms"].items():
        lines.append(f"{stage:<12}{v['p50']:>10.2f}{v['p95']:>10.2f}")
    return "\n".join(lines)


RUN_COMMAND = RunCommand()


def build_parser() -> argparse.ArgumentParser:
    """The parser of `edgedet-run` (also what the docs' CLI reference prints)."""
    parser = argparse.ArgumentParser(prog="edgedet-run", description=RUN_COMMAND.help)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    RUN_COMMAND.add_arguments(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Console script `edgedet-run`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return RUN_COMMAND.run(args)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        if args.verbose:
            raise
        print(f"edgedet-run: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
