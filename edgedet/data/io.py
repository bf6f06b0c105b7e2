"""Helpers shared by the dataset readers; the torch-free ones (errors, image headers, the bad-file
policy, box cleaning) live in `runtime.annotations.common`, which the runtime's `val` uses too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

from PIL import Image

from runtime.annotations.common import (  # noqa: F401  (re-exported: edgedet's readers and tests use them from here)
    IMAGE_SUFFIXES,
    SKIP_HINT,
    BadFilePolicy,
    DataFormatError,
    DegenerateCounter,
    clean_boxes,
    image_size,
    resolve_path,
)


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
