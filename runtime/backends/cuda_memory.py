"""Minimal CUDA memory and streams through cuda-python (no torch, no pycuda).

Works with cuda-python 12.x/13.x (`cuda.bindings.runtime`) and 11.x (`cuda.cudart`).
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np

try:
    from cuda.bindings import runtime as cudart
except ImportError:  # cuda-python < 12.6
    try:
        from cuda import cudart  # type: ignore[no-redef]
    except ImportError as e:
        raise ImportError(f"cuda-python is not installed ({e}); pip install 'edgedet[tensorrt]'") from e


def check(result: Any) -> Any:
    """Unpack a cuda-python call's (err, value...) tuple, raising on a CUDA error."""
    if isinstance(result, tuple):
        err, rest = result[0], result[1:]
    else:
        err, rest = result, ()
    if int(err) != 0:
        _, name = cudart.cudaGetErrorName(err)
        raise RuntimeError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


class Stream:
    def __init__(self) -> None:
        self.handle = check(cudart.cudaStreamCreate())

    def synchronize(self) -> None:
        check(cudart.cudaStreamSynchronize(self.handle))

    def close(self) -> None:
        if self.handle is not None:
            check(cudart.cudaStreamDestroy(self.handle))
            self.handle = None


class DeviceBuffer:
    """nbytes of device memory; copies to/from numpy arrays, optionally on a stream."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr = int(check(cudart.cudaMalloc(max(1, self.nbytes))))

    def copy_from_host(self, array: np.ndarray, stream: "Stream | None" = None) -> None:
        array = np.ascontiguousarray(array)
        if array.nbytes > self.nbytes:
            raise ValueError(f"host array of {array.nbytes} bytes does not fit a {self.nbytes}-byte device buffer")
        kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        if stream is None:
            check(cudart.cudaMemcpy(self.ptr, array.ctypes.data, array.nbytes, kind))
        else:
            check(cudart.cudaMemcpyAsync(self.ptr, array.ctypes.data, array.nbytes, kind, stream.handle))

    def copy_to_host(self, array: np.ndarray, stream: "Stream | None" = None) -> np.ndarray:
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if stream is None:
            check(cudart.cudaMemcpy(array.ctypes.data, self.ptr, array.nbytes, kind))
        else:
            check(cudart.cudaMemcpyAsync(array.ctypes.data, self.ptr, array.nbytes, kind, stream.handle))
        return array

    def free(self) -> None:
        if self.ptr:
            check(cudart.cudaFree(self.ptr))
            self.ptr = 0


def pinned_empty(shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A numpy array in page-locked host memory (faster, truly asynchronous copies)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    ptr = int(check(cudart.cudaMallocHost(max(1, nbytes))))
    import ctypes

    buf = (ctypes.c_byte * max(1, nbytes)).from_address(ptr)
    return np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
