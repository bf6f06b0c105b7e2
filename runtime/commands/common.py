"""What the runtime commands share: source expansion, CLI arguments, small formatting helpers."""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path
from typing import Any, List, Tuple, Union

from runtime.capture import IMAGE_SUFFIXES, URL_SCHEMES

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".ts")


def is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def expand_images(source: Union[str, Path]) -> Tuple[List[Path], List[Path]]:
    """An image file, folder or glob -> (image files, other files that will be skipped), sorted by name.

    Raises FileNotFoundError for a missing path, a glob that matches nothing or a folder with no files.
    """
    text = str(source)
    if is_glob(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"no files match {text}: check the pattern (quote it so the shell does not expand it)")
    else:
        path = Path(text)
        if not path.exists():
            raise FileNotFoundError(f"source not found: {text} (an image, folder, glob, video, camera index or URL)")
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"folder {text} is empty: put images ({', '.join(IMAGE_SUFFIXES)}) in it or pass another --source")
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    return images, others


def source_kind(source: Any) -> str:
    """'images' (file, folder, glob of images) or 'stream' (video file, camera, URL, pipeline)."""
    if isinstance(source, int):
        return "stream"
    text = str(source)
    if text.strip().isdigit() or text.lower().startswith(URL_SCHEMES) or "!" in text:
        return "stream"
    if is_glob(text) or Path(text).is_dir():
        return "images"
    return "stream" if Path(text).suffix.lower() in VIDEO_SUFFIXES else "images"


def source_arg(text: str) -> Any:
    return int(text) if text.strip().isdigit() else text


CONF_HELP = "minimum score drawn and written (default: the threshold the model's manifest recommends; printed)"
DEDUP_HELP = ("drop a box overlapping a higher-scoring box of its class by more than this IoU (0.7 drops near-copies "
              "of one object; 0 = off; default: the manifest's recommendation, else off)")


def add_threshold_arguments(parser: argparse.ArgumentParser, conf_help: str = CONF_HELP) -> None:
    """--conf and --dedup-iou: the same names and defaults on every command that draws or writes detections."""
    parser.add_argument("--conf", type=float, default=None, help=conf_help)
    parser.add_argument("--dedup-iou", type=float, default=None, metavar="IOU", help=DEDUP_HELP)


def add_model_arguments(parser: argparse.ArgumentParser, conf_help: str = CONF_HELP) -> None:
    parser.add_argument("--model", required=True, help="exported artifact (.onnx, .xml, .engine) or a .pth checkpoint (needs torch)")
    parser.add_argument("--imgsz", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="checkpoints only: score with the letterbox input an export at H W declares (default: the size `edgedet export` picks for the checkpoint, printed)")
    add_threshold_arguments(parser, conf_help)
    parser.add_argument("--classes", type=int, nargs="+", default=None, help="keep only these class ids")
    parser.add_argument("--backend", default="auto", help="auto (by file suffix), onnxruntime, openvino or tensorrt")
    parser.add_argument("--device", default="CPU", help="CPU, cuda, cuda:N (onnxruntime); CPU, GPU, NPU (openvino)")
    parser.add_argument("--project", default="runs", help="results go to a fresh PROJECT/<task>/N folder (default runs)")


def say_defaults(detector: Any, quiet: bool = False) -> None:
    """Print once which score threshold and duplicate filter are in use and where they came from (stderr)."""
    note = getattr(detector, "defaults_note", None) or getattr(getattr(detector, "detector", None), "defaults_note", None)
    # (the live view's re-promptable detector wraps the PromptedDetector that knows it)
    if note and not quiet:
        print(note, file=sys.stderr, flush=True)


def lower_score_floor(detector: Any, floor: float) -> None:
    """Keep detections down to `floor` (below the threshold in use) for a command that needs weak ones too:
    ByteTrack's second stage, mAP. The threshold itself (`detector.conf`, printed) is unchanged."""
    post = getattr(detector, "postprocessor", None)
    if post is None:
        raise TypeError(f"{type(detector).__name__} has no postprocessor whose score floor could be lowered; pass a runtime Detector")
    post.conf = min(float(floor), float(detector.conf))


def summarize_names(names: List[str]) -> str:
    """['car', 'car', 'bus'] -> '2 car, 1 bus'."""
    counts: dict = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return ", ".join(f"{c} {n}" for n, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "no objects"
