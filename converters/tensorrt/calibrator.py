"""INT8 entropy calibration for TensorRT, fed by the runtime's own preprocessing."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

import numpy as np

log = logging.getLogger(__name__)


def make_entropy_calibrator(batches: Iterable[np.ndarray], cache_file: Optional[Path] = None):
    """An `IInt8EntropyCalibrator2` over preprocessed float32 batches [B, 3, H, W] (same B each).

    Built inside a function so `tensorrt` and `cuda-python` are imported only when calibrating.
    """
    import tensorrt as trt

    from runtime.backends.cuda_memory import DeviceBuffer

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._iter: Iterator[np.ndarray] = iter(batches)
            self._buffer: Optional[DeviceBuffer] = None
            self._batch_size = 0
            self._first = next(self._iter, None)
            if self._first is None:
                raise ValueError("INT8 calibration needs at least one calibration batch")
            self._batch_size = int(self._first.shape[0])

        def get_batch_size(self) -> int:
            return self._batch_size

        def get_batch(self, names: List[str]) -> Optional[List[int]]:
            batch = self._first if self._first is not None else next(self._iter, None)
            self._first = None
            if batch is None:
                return None  # tells TensorRT calibration is over
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            if self._buffer is None:
                self._buffer = DeviceBuffer(batch.nbytes)
            self._buffer.copy_from_host(batch)
            return [self._buffer.ptr]

        def read_calibration_cache(self) -> Optional[bytes]:
            if cache_file is not None and Path(cache_file).is_file():
                log.info("reusing INT8 calibration cache %s", cache_file)
                return Path(cache_file).read_bytes()
            return None

        def write_calibration_cache(self, cache: bytes) -> None:
            if cache_file is not None:
                Path(cache_file).write_bytes(bytes(cache))

    return EntropyCalibrator()
