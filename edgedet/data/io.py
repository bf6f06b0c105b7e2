"""Helpers shared by the dataset readers: image headers, the bad-file policy and box cleaning.

A reader turns every problem with one file into a `DataFormatError` naming that file; the
`BadFilePolicy` then either raises it or (with `data.skip_corrupt`) counts it and moves on.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SKIP_HINT = "fix or remove it, or set data.skip_corrupt=true to skip such files"


class DataFormatError(ValueError):
    """A corrupt image or a malformed annotation; the message names the file (and line)."""


def image_size(path: Union[str, Path], decode: bool = False) -> Tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels; with `decode` (used
    with data.skip_corrupt) the pixels are decoded too, which catches a truncated body behind an intact header."""
    try:
        with Image.open(path) as im:
            im.verify()  # checks the container structure cheaply (no full decode)
            w, h = im.size
        if decode:
            with Image.open(path) as im:
                im.load()  # PIL raises "image file is truncated" where OpenCV would fill the rest with grey
    except FileNotFoundError:
        raise DataFormatError(f"image not found: {path}; {SKIP_HINT}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataFormatError(f"corrupt or unreadable image {path} ({e}); {SKIP_HINT}") from None
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


def jpeg_truncated(path: Union[str, Path]) -> bool:
    """True when a JPEG's body is cut short (OpenCV decodes such a file as a partly grey image, silently).
    Cheap: only files whose last bytes lack the end-of-image marker are decoded with PIL to be sure."""
    path = Path(path)
    if path.suffix.lower() not in (".jpg", ".jpeg"):
        return False
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 64))
            tail = f.read().rstrip(b"\x00\r\n ")
        if tail.endswith(b"\xff\xd9"):
            return False
        with Image.open(path) as im:
            im.load()
    except OSError:
        return True
    return False
