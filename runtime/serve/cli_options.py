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
                             "Jetson from a laptop); prints a warning; every page and endpoint then needs the token")
    add_token_arguments(parser)
    parser.add_argument("--prompt-encoder", default=None, metavar="ARTIFACT",
                        help="run --model as a prompted detector with this prompt encoder (export_prompted's two artifacts)")
    parser.add_argument("--prompts", default=None, metavar="FILE.npz", help="prompted detector: start with these saved prompts")
    parser.add_argument("--prompt-dir", default="runs/prompts", help="prompted detector: where the page saves prompt files")
    parser.add_argument("--loop", action="store_true", help="play a video file as a live camera, looping (demos, kiosks)")


def _checked(kind: str):
    """argparse type: a bad token or unreadable token file fails at once, before any model loads."""
    def check(text: str) -> str:
        from runtime.serve.access import resolve_token

        try:
            resolve_token(**{kind: text}, env={})
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text

    return check


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    """--token / --token-file / --allow-host / --max-viewers, shared by run, track and demo."""
    parser.add_argument("--token", default=None, type=_checked("token"),
                        help="with --serve: the view's token (shows in `ps`: prefer --token-file or $EDGEDET_SERVE_TOKEN; "
                             "default: a random one, printed in the URL)")
    parser.add_argument("--token-file", default=None, metavar="FILE", type=_checked("token_file"), help="with --serve: read the token from this file")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="with --serve: a host name browsers may use for this machine besides its addresses and "
                             "hostname (e.g. jetson.example.lan); other names are refused (DNS rebinding)")
    parser.add_argument("--max-viewers", type=int, default=8, help="with --serve: at most this many browsers watch at once (default 8)")


def server_options(args: argparse.Namespace) -> Dict[str, Any]:
    """LiveServer keyword arguments from the token options and --max-viewers."""
    return {"token": args.token, "token_file": getattr(args, "token_file", None),
            "allowed_hosts": tuple(getattr(args, "allow_host", None) or ()), "max_viewers": getattr(args, "max_viewers", 8)}


def make_detector(args: argparse.Namespace, options: Dict[str, Any]) -> Any:
    """The plain `Detector`, or a re-promptable `PromptedDetector` when --prompt-encoder is given."""
    if not args.prompt_encoder:
        from runtime.detector import Detector

        return Detector(args.model, backend=args.backend, device=args.device, conf=args.conf, classes=args.classes,
                        dedup_iou=getattr(args, "dedup_iou", None), **options)
    from runtime.prompted import PromptedDetector
    from runtime.serve.prompts import LivePromptedDetector

    from runtime.prompted import PROMPTED_CONF, PROMPTED_DEDUP_IOU

    # Prompted artifacts carry no tuned threshold (scores depend on the prompts): the prompted demo's.
    conf = PROMPTED_CONF if args.conf is None else args.conf
    dedup_iou = getattr(args, "dedup_iou", None)
    prompted = PromptedDetector(args.prompt_encoder, args.model, backend=args.backend, device=args.device, conf=conf,
                                dedup_iou=PROMPTED_DEDUP_IOU if dedup_iou is None else dedup_iou, **options)
    if args.prompts:
        prompted.load_prompts(args.prompts)
    if args.conf is None:
        print(f"prompted detector: drawing threshold {conf} (--conf to change)", file=sys.stderr)
    return LivePromptedDetector(prompted, Path(args.prompt_dir), inputs=[args.model, args.prompt_encoder],
                                merge_iou=PROMPTED_DEDUP_IOU)


def source_options(args: argparse.Namespace) -> Dict[str, Any]:
    """open_source arguments: --loop plays a file live and loops it."""
    if getattr(args, "loop", False):
        return {"live": True, "loop": True}
    return {"live": args.live or None}


def start_server(args: argparse.Namespace, detector: Any) -> Optional[Any]:
    """The LiveServer sink when --serve is given (started, URL printed), else None."""
    if not args.serve:
        if args.host or args.token or args.token_file:
            raise ValueError("--host, --token and --token-file only apply with --serve PORT")
        return None
    from runtime.serve.prompts import LivePromptedDetector
    from runtime.serve.server import LiveServer, parse_serve_address

    host, port, remote = parse_serve_address(args.serve, args.host)
    prompts = detector if isinstance(detector, LivePromptedDetector) else None
    server = LiveServer(host, port, allow_remote=remote, prompts=prompts, **server_options(args)).start()
    if remote:
        print(f"WARNING: the live view is reachable from other machines on {host}:{server.port}; the page, stream and "
              "API need the token in the URL below (share it only with those who may watch)", file=sys.stderr)
    server.announce(file=sys.stderr)
    return server
