"""Per-frame samples of a soak bench kept in memory that is allocated and touched before the run starts.

A soak watches its own process's resident memory, so its bookkeeping must not grow with the run: Python
lists of (time, ms) tuples cost ~250 bytes a frame, which over 30 minutes at 30 FPS is ~13 MiB, i.e. the
"+3%" an early 30-minute run reported. Here every column is a float64 array filled with NaN at creation (so
its pages are resident in the baseline) and written in place; a run that outlasts its capacity keeps every
other sample from then on (the windows' percentiles stay representative), and says so.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


class SampleLog:
    """Rows of `columns` floats, preallocated for `capacity` rows (pages touched now, not during the run)."""

    def __init__(self, columns: Tuple[str, ...], capacity: int):
        if capacity < 2:
            raise ValueError(f"SampleLog capacity must be at least 2, got {capacity}")
        self.columns = tuple(columns)
        self._data = np.full((capacity, len(self.columns)), np.nan)  # np.full writes every page: resident now
        self._n = 0
        self._stride = 1  # keep one sample in `_stride` once the capacity has been reached
        self._seen = 0
        self.thinned = False

    @classmethod
    def for_run(cls, columns: Tuple[str, ...], seconds: float, max_rate_hz: float = 500.0) -> "SampleLog":
        """Capacity for `seconds` at up to `max_rate_hz` rows a second (beyond it, the log thins itself)."""
        return cls(columns, int(seconds * max_rate_hz) + 1024)

    def append(self, *values: float) -> None:
        self._seen += 1
        if (self._seen - 1) % self._stride:
            return
        if self._n == len(self._data):  # full: keep every other row so far, then half as often from now on
            kept = self._data[::2].copy()
            self._data[: len(kept)] = kept
            self._data[len(kept):] = np.nan
            self._n, self._stride, self.thinned = len(kept), self._stride * 2, True
        self._data[self._n] = values
        self._n += 1

    def __len__(self) -> int:
        return self._n

    @property
    def seen(self) -> int:
        """Rows appended over the run (thinning keeps fewer)."""
        return self._seen

    def column(self, name: str) -> np.ndarray:
        return self._data[: self._n, self.columns.index(name)]

    def window_p95(self, value: str, start_s: float, end_s: float, time: str = "t_s") -> float:
        """The 95th percentile of `value` over rows with `start_s <= time < end_s` (NaN when none)."""
        t, v = self.column(time), self.column(value)
        picked = v[(t >= start_s) & (t < end_s)]
        return float(np.percentile(picked, 95)) if len(picked) else float("nan")
