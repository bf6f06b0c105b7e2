"""Reading one image file so that a damaged one is never processed as if whole without a word.

OpenCV decodes a JPEG whose body was cut short (an interrupted copy or download) as a partly grey
image; libjpeg's only sign is a stray "Premature end of JPEG file" on stderr that names no file.
`read_image` checks for the end-of-image marker first and names the file in a warning; callers count it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple, Union

import cv2
import numpy as np

log = logging.getLogger(__name__)

JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")


def jpeg_truncated(data: bytes) -> bool:
    """True for JPEG bytes that lack their end-of-image marker (trailing padding ignored)."""
    return data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")


def read_image(path: Union[str, Path]) -> Tuple[Optional[np.ndarray], bool]:
    """-> (BGR uint8 image or None when it cannot be decoded, truncated). A truncated JPEG that still
    decodes is returned (its lower part grey) with a warning naming it, so the caller can count it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError:
        return None, False
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    truncated = jpeg_truncated(data)
    if truncated and image is not None:
        log.warning("%s is truncated (the JPEG ends before its last byte): processed as far as it goes, the rest is "
                    "grey; copy the file again", path)
    return image, truncated


__all__ = ["read_image", "jpeg_truncated"]
