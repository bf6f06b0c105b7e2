"""OpenCV's worker-thread count held for the life of the threaded pipelines.

A pipeline runs capture, preprocessing, the engine and postprocessing on threads of their own, so they
already fill the cores; OpenCV's own pool (cv2.resize etc. split over its workers) then only adds
workers that busy-wait between calls and take CPU from the engine (measured: ~0.5 ms CPU per frame on
a 2-core box, a sixth of the toy detector's work). `hold(n)` sets the count while any pipeline runs and
the last `release()` puts back what was there before, so pipelines that overlap in time nest correctly.
"""
from __future__ import annotations

import threading
from typing import Optional

import cv2

_lock = threading.Lock()
_holders = 0
_before: Optional[int] = None


def hold(threads: Optional[int]) -> bool:
    """Set OpenCV's thread count to `threads` (None: leave it) until the matching release(); True when held."""
    global _holders, _before
    if threads is None:
        return False
    with _lock:
        if _holders == 0:
            _before = cv2.getNumThreads()
            cv2.setNumThreads(int(threads))
        _holders += 1
    return True


def release() -> None:
    """The last holder puts back the count there was before the first hold."""
    global _holders, _before
    with _lock:
        if _holders == 0:
            return
        _holders -= 1
        if _holders == 0 and _before is not None:
            cv2.setNumThreads(_before)
            _before = None
