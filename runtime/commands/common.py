"""What the runtime commands share: source expansion, CLI arguments, small formatting helpers."""
from __future__ import annotations

import argparse
import glob
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


def add_model_arguments(parser: argparse.ArgumentParser, conf: float = 0.25) -> None:
    parser.add_argument("--model", required=True, help="exported artifact (.onnx, .xml, .engine) or a .pth checkpoint (needs torch)")
    parser.add_argument("--imgsz", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="checkpoints only: score with the letterbox input an export at H W declares (default: the size `edgedet export` picks for the checkpoint, printed)")
    parser.add_argument("--conf", type=float, default=conf, help=f"minimum score (default {conf})")
    parser.add_argument("--classes", type=int, nargs="+", default=None, help="keep only these class ids")
    parser.add_argument("--backend", default="auto", help="auto (by file suffix), onnxruntime, openvino or tensorrt")
    parser.add_argument("--device", default="CPU", help="CPU, cuda, cuda:N (onnxruntime); CPU, GPU, NPU (openvino)")
    parser.add_argument("--project", default="runs", help="results go to a fresh PROJECT/<task>/N folder (default runs)")


def summarize_names(names: List[str]) -> str:
    """['car', 'car', 'bus'] -> '2 car, 1 bus'."""
    counts: dict = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return ", ".join(f"{c} {n}" for n, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "no objects"
