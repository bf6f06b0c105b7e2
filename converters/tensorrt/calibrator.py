"""INT8 entropy calibration for TensorRT (the implicit-quantization path, for TensorRT 8.x on
JetPack 5; TensorRT 10 prefers the explicit Q/DQ path of `converters.tensorrt.qdq`).

Batches are preprocessed by the runtime's own preprocessing. A batch is one array (models with
one input) or a dict input name -> array (several inputs, e.g. the prompted detector); each
input gets its own device buffer, freed by `close()` (called by the builder once the engine is
built, and by a finaliser otherwise). The calibration cache is written atomically.
"""
from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np

from converters.tensorrt.files import atomic_write_bytes

log = logging.getLogger(__name__)

Batch = Union[np.ndarray, Mapping[str, np.ndarray]]


def as_feeds(batch: Batch, input_names: Sequence[str]) -> Dict[str, np.ndarray]:
    """One calibration batch as input name -> contiguous float32/int array, checked against the names."""
    if isinstance(batch, Mapping):
        missing, extra = sorted(set(input_names) - set(batch)), sorted(set(batch) - set(input_names))
        if missing or extra:
            raise ValueError(f"calibration batch has inputs {sorted(batch)}, the network {list(input_names)}")
        feeds = dict(batch)
    else:
        if len(input_names) != 1:
            raise ValueError(f"the network has inputs {list(input_names)}: give each calibration batch as a dict "
                             "input name -> array")
        feeds = {input_names[0]: batch}
    return {k: np.ascontiguousarray(v, dtype=np.float32 if np.asarray(v).dtype.kind == "f" else None)
            for k, v in feeds.items()}


class CalibrationFeeder:
    """The framework-free half of the calibrator: walks the batches and keeps one device buffer
    per input (grown when needed), all freed by `close()`."""

    def __init__(self, batches: Iterable[Batch], input_names: Sequence[str], buffer_factory) -> None:
        self.input_names = list(input_names)
        self._iter: Iterator[Batch] = iter(batches)
        self._first: Optional[Dict[str, np.ndarray]] = None
        first = next(self._iter, None)
        if first is None:
            raise ValueError("INT8 calibration needs at least one calibration batch")
        self._first = as_feeds(first, self.input_names)
        sizes = {int(v.shape[0]) for v in self._first.values()}
        if len(sizes) != 1:
            raise ValueError(f"calibration inputs disagree on the batch size: {sorted(sizes)}")
        self.batch_size = sizes.pop()
        self._factory = buffer_factory
        self.buffers: Dict[str, object] = {}
        self.batches_fed = 0
        self._finalizer = weakref.finalize(self, CalibrationFeeder._free, self.buffers)

    @staticmethod
    def _free(buffers: Dict[str, object]) -> None:
        for buf in buffers.values():
            buf.free()
        buffers.clear()

    def next_pointers(self, names: Sequence[str]) -> Optional[List[int]]:
        """Device pointers for TensorRT's `get_batch(names)`, or None when the batches are done."""
        feeds = self._first if self._first is not None else None
        self._first = None
        if feeds is None:
            batch = next(self._iter, None)
            if batch is None:
                return None
            feeds = as_feeds(batch, self.input_names)
        ptrs = []
        for name in names:
            if name not in feeds:
                raise ValueError(f"TensorRT asked for calibration input '{name}', the batches hold {sorted(feeds)}")
            arr = feeds[name]
            if int(arr.shape[0]) != self.batch_size:
                raise ValueError(f"calibration batch of {arr.shape[0]} for '{name}'; every batch must hold {self.batch_size}")
            buf = self.buffers.get(name)
            if buf is None or buf.nbytes < arr.nbytes:
                if buf is not None:
                    buf.free()
                buf = self.buffers[name] = self._factory(arr.nbytes)
            buf.copy_from_host(arr)
            ptrs.append(buf.ptr)
        self.batches_fed += 1
        return ptrs

    def close(self) -> None:
        self._finalizer()


def read_cache(cache_file: Optional[Path]) -> Optional[bytes]:
    if cache_file is not None and Path(cache_file).is_file():
        log.info("reusing INT8 calibration cache %s (delete it to calibrate again)", cache_file)
        return Path(cache_file).read_bytes()
    return None


def make_entropy_calibrator(batches: Iterable[Batch], input_names: Sequence[str], cache_file: Optional[Path] = None):
    """An `IInt8EntropyCalibrator2` over preprocessed batches (see module docstring); call `.close()` after the build.

    Built inside a function so `tensorrt` and `cuda-python` are imported only when calibrating.
    """
    import tensorrt as trt

    from runtime.backends.cuda_memory import DeviceBuffer

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.feeder = CalibrationFeeder(batches, input_names, DeviceBuffer)

        def get_batch_size(self) -> int:
            return self.feeder.batch_size

        def get_batch(self, names: List[str]) -> Optional[List[int]]:
            return self.feeder.next_pointers(names)

        def read_calibration_cache(self) -> Optional[bytes]:
            return read_cache(cache_file)

        def write_calibration_cache(self, cache: bytes) -> None:
            if cache_file is not None:
                atomic_write_bytes(Path(cache_file), bytes(cache))

        def close(self) -> None:
            self.feeder.close()

    return EntropyCalibrator()
