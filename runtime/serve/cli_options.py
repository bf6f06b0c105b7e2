"""`edgedet run` options for the live web view and the prompted detector (kept apart from runtime/cli.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--serve", default=None, metavar="[HOST:]PORT",
                        help="serve a live view in the browser (annotated stream, stats, detections; prompts with "
                             "--prompt-encoder) on 127.0.0.1:PORT")
    parser.add_argument("--host", default=None,
                        help="with --serve: bind this address instead of 127.0.0.1 (e.g. 0.0.0.0 to watch a headless "
                             "Jetson from a laptop); prints a warning, prompt changes still need the token")
    parser.add_argument("--token", default=None, help="with --serve: the token prompt changes need (default: a random one, printed)")
    parser.add_argument("--prompt-encoder", default=None, metavar="ARTIFACT",
                        help="run --model as a prompted detector with this prompt encoder (export_prompted's two artifacts)")
    parser.add_argument("--prompts", default=None, metavar="FILE.npz", help="prompted detector: start with these saved prompts")
    parser.add_argument("--prompt-dir", default="runs/prompts", help="prompted detector: where the page saves prompt files")
    parser.add_argument("--loop", action="store_true", help="play a video file as a live camera, looping (demos, kiosks)")


def make_detector(args: argparse.Namespace, options: Dict[str, Any]) -> Any:
    """The plain `Detector`, or a re-promptable `PromptedDetector` when --prompt-encoder is given."""
    if not args.prompt_encoder:
        from runtime.detector import Detector

        return Detector(args.model, backend=args.backend, device=args.device, conf=args.conf, classes=args.classes,
                        dedup_iou=getattr(args, "dedup_iou", None), **options)
    from runtime.prompted import PromptedDetector
    from runtime.serve.prompts import LivePromptedDetector

    prompted = PromptedDetector(args.prompt_encoder, args.model, backend=args.backend, device=args.device, conf=args.conf,
                                dedup_iou=getattr(args, "dedup_iou", None), **options)
    if args.prompts:
        prompted.load_prompts(args.prompts)
    return LivePromptedDetector(prompted, Path(args.prompt_dir), inputs=[args.model, args.prompt_encoder])


def source_options(args: argparse.Namespace) -> Dict[str, Any]:
    """open_source arguments: --loop plays a file live and loops it."""
    if getattr(args, "loop", False):
        return {"live": True, "loop": True}
    return {"live": args.live or None}


def start_server(args: argparse.Namespace, detector: Any) -> Optional[Any]:
    """The LiveServer sink when --serve is given (started, URL printed), else None."""
    if not args.serve:
        if args.host:
            raise ValueError("--host only applies with --serve PORT")
        return None
    from runtime.serve.prompts import LivePromptedDetector
    from runtime.serve.server import LiveServer, parse_serve_address

    host, port, remote = parse_serve_address(args.serve, args.host)
    prompts = detector if isinstance(detector, LivePromptedDetector) else None
    server = LiveServer(host, port, token=args.token, allow_remote=remote, prompts=prompts).start()
    if remote:
        print(f"WARNING: the live view is reachable from other machines on {host}:{server.port}; anyone on the "
              "network can watch the stream (prompt changes need the token)", file=sys.stderr)
    print(f"live view: {server.url}", file=sys.stderr, flush=True)
    return server
