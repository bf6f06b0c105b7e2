"""Records, errors and helpers shared by the annotation readers: image headers, the bad-file policy
and box cleaning.

A reader turns every problem with one file into a `DataFormatError` naming that file; the
`BadFilePolicy` then either raises it or (with `data.skip_corrupt`) counts it and moves on.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Tuple, Union

import numpy as np
import yaml

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SKIP_HINT = "fix or remove it, or set data.skip_corrupt=true to skip such files"


class DatasetError(ValueError):
    """A dataset that cannot be read as given; the message says what to fix."""


class DataFormatError(DatasetError):
    """A corrupt image or a malformed annotation; the message names the file (and line)."""


@dataclass
class ImageRecord:
    """One image: boxes_xyxy float32 [n, 4] absolute pixels, labels int64 [n] contiguous 0..C-1."""

    image_id: int
    path: Path
    width: int
    height: int
    boxes_xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.boxes_xyxy = np.asarray(self.boxes_xyxy, np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        if len(self.boxes_xyxy) != len(self.labels):
            raise ValueError(f"{self.path}: {len(self.boxes_xyxy)} boxes but {len(self.labels)} labels")


def read_yaml(path: Union[str, Path]) -> Any:
    """yaml.safe_load of a file; a syntax error becomes one line naming the file, line and problem."""
    p = Path(path)
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise DataFormatError(f"{p} is not valid YAML ({problem} at{where or ' an unknown place'}); fix the file") from None
    except UnicodeDecodeError:
        raise DataFormatError(f"{p} is not a text file; pass a YAML file") from None


def _size_with_pil(path: Path, decode: bool) -> Tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()  # checks the container structure cheaply (no full decode)
            w, h = im.size
        if decode:
            with Image.open(path) as im:
                im.load()  # PIL raises "image file is truncated" where OpenCV would fill the rest with grey
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataFormatError(f"corrupt or unreadable image {path} ({e}); {SKIP_HINT}") from None
    return int(w), int(h)


def image_size(path: Union[str, Path], decode: bool = False) -> Tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels; with `decode` (used
    with data.skip_corrupt) the pixels are decoded too, which catches a truncated body behind an intact header.
    Without Pillow (a bare runtime install) the image is decoded with OpenCV instead."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"image not found: {path}; {SKIP_HINT}")
    try:
        w, h = _size_with_pil(path, decode)
    except ImportError:
        import cv2

        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise DataFormatError(f"corrupt or unreadable image {path}; {SKIP_HINT}") from None
        h, w = image.shape[:2]
    if w <= 0 or h <= 0:
        raise DataFormatError(f"image {path} has an empty size {w}x{h}; {SKIP_HINT}")
    return int(w), int(h)


class BadFilePolicy:
    """Raise on the first bad file, or (skip=True) count bad files and log them once at the end."""

    def __init__(self, skip: bool, source: str):
        self.skip = skip
        self.source = source
        self.skipped: List[str] = []

    def handle(self, err: DataFormatError) -> None:
        if not self.skip:
            raise err
        self.skipped.append(str(err))

    def report(self) -> None:
        if self.skipped:
            logger.warning("%s: skipped %d corrupt or malformed file(s); first: %s", self.source, len(self.skipped), self.skipped[0])


class DegenerateCounter:
    """Counts boxes dropped because they have no area; logs the total once."""

    def __init__(self, source: str):
        self.source = source
        self.count = 0

    def report(self) -> None:
        if self.count:
            logger.warning("%s: dropped %d degenerate box(es) with zero width or height", self.source, self.count)


def clean_boxes(
    boxes_xyxy: np.ndarray, labels: np.ndarray, width: int, height: int, counter: DegenerateCounter
) -> Tuple[np.ndarray, np.ndarray]:
    """Clip boxes_xyxy [n, 4] (absolute pixels) to the image and drop those left without area."""
    boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4).copy()
    labels = np.asarray(labels, np.int64).reshape(-1)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    counter.count += int((~keep).sum())
    return boxes[keep], labels[keep]


def resolve_path(path: str, root: Path) -> Path:
    """A path as given if it exists, else relative to `root`."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return root / p
