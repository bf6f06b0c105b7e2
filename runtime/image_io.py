"""Reading one image file so that a damaged one is never processed as if whole without a word.

OpenCV decodes a JPEG whose body was cut short (an interrupted copy or download) as a partly grey
image; libjpeg's only sign is a stray "Premature end of JPEG file" on stderr that names no file.
`read_image` checks for the end-of-image marker first and names the file in a warning; callers count it.
libjpeg's own line is then held back (it would only repeat the warning without the file's name).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import cv2
import numpy as np

log = logging.getLogger(__name__)
_STDERR_LOCK = threading.Lock()


def jpeg_truncated(path: Union[str, Path]) -> bool:
    """True for a JPEG file that lacks its end-of-image marker (trailing padding ignored). Reads 2 + 64 bytes."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\xff\xd8":
                return False
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64))
            return not f.read().rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")
    except OSError:
        return False


def read_image(path: Union[str, Path]) -> Tuple[Optional[np.ndarray], bool]:
    """-> (BGR uint8 image or None when it cannot be decoded, truncated). A truncated JPEG that still
    decodes is returned (its lower part grey) with a warning naming it, so the caller can count it."""
    truncated = jpeg_truncated(path)
    with _native_stderr_held_back() if truncated else contextlib.nullcontext():
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # grayscale and 16-bit files come back as 8-bit BGR
    if truncated and image is not None:
        log.warning("%s is truncated (the JPEG ends before its last byte): processed as far as it decodes, the "
                    "rest is grey; copy the file again", path)
    return image, truncated


@contextlib.contextmanager
def _native_stderr_held_back() -> Iterator[None]:
    """Native code's writes to file descriptor 2 go to /dev/null for the block (Python's own are flushed
    first). Used only around the decode of a file already known to be truncated; other threads' native
    stderr in those few milliseconds is held back too, which is why it is not used more widely. One block
    at a time: two overlapping ones could otherwise restore each other's /dev/null for good."""
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no real descriptor 2 (embedded interpreters): say nothing more
            yield
            return
        try:
            with open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), 2)
                yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


__all__ = ["read_image", "jpeg_truncated"]
