"""Minimal CUDA memory, streams and graphs through cuda-python (no torch, no pycuda).

Works with cuda-python 12.x/13.x (`cuda.bindings.runtime`) and 11.x (`cuda.cudart`). Every
object here owns one CUDA resource and frees it in `free()`/`close()` (idempotent); the
TensorRT backend and calibrator call those from `close()` and from a finaliser.
"""
from __future__ import annotations

import ctypes
from typing import Any, Optional, Tuple

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


def parse_device(device: str) -> int:
    """"cuda" / "cuda:N" / "GPU" / "GPU.N" -> N (0 when absent); a one-line error otherwise."""
    text = (device or "cuda").strip()
    for prefix, sep in (("cuda", ":"), ("gpu", ".")):
        if text.lower() == prefix:
            return 0
        if text.lower().startswith(prefix + sep) and text[len(prefix) + 1:].isdigit():
            return int(text[len(prefix) + 1:])
    raise ValueError(f"device '{device}' is not a CUDA device; TensorRT runs on 'cuda' or 'cuda:N' (N = GPU index)")


def device_count() -> int:
    return int(check(cudart.cudaGetDeviceCount()))


def set_device(index: int) -> None:
    """Make GPU `index` current for this thread (CUDA's current device is per thread)."""
    check(cudart.cudaSetDevice(int(index)))


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

    def copy_from_host(self, array: np.ndarray, stream: Optional[Stream] = None) -> None:
        array = np.ascontiguousarray(array)
        if array.nbytes > self.nbytes:
            raise ValueError(f"host array of {array.nbytes} bytes does not fit a {self.nbytes}-byte device buffer")
        kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        if stream is None:
            check(cudart.cudaMemcpy(self.ptr, array.ctypes.data, array.nbytes, kind))
        else:
            check(cudart.cudaMemcpyAsync(self.ptr, array.ctypes.data, array.nbytes, kind, stream.handle))

    def copy_to_host(self, array: np.ndarray, stream: Optional[Stream] = None) -> np.ndarray:
        if array.nbytes > self.nbytes:
            raise ValueError(f"host array of {array.nbytes} bytes is larger than the {self.nbytes}-byte device buffer")
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


class PinnedBuffer:
    """nbytes of page-locked host memory: device copies from/to it are truly asynchronous."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr = int(check(cudart.cudaMallocHost(max(1, self.nbytes))))

    def view(self, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A numpy array over the first bytes of the buffer (valid until `free`)."""
        count = int(np.prod(shape))
        nbytes = count * np.dtype(dtype).itemsize
        if nbytes > self.nbytes or not self.ptr:
            raise ValueError(f"a {nbytes}-byte view does not fit this {self.nbytes}-byte pinned buffer")
        raw = (ctypes.c_byte * max(1, nbytes)).from_address(self.ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            check(cudart.cudaFreeHost(self.ptr))
            self.ptr = 0


class CudaGraph:
    """A captured and instantiated CUDA graph, replayed with `launch(stream)`."""

    def __init__(self, graph: Any, graph_exec: Any):
        self.graph, self.graph_exec = graph, graph_exec

    @classmethod
    def capture(cls, stream: Stream, enqueue) -> "CudaGraph":
        """Record what `enqueue()` puts on `stream` (nothing runs) and instantiate it."""
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(cudart.cudaStreamBeginCapture(stream.handle, mode))
        try:
            ok = enqueue()
        finally:
            graph = check(cudart.cudaStreamEndCapture(stream.handle))
        if not ok:
            if graph is not None:
                check(cudart.cudaGraphDestroy(graph))
            raise RuntimeError("the enqueue failed while capturing a CUDA graph")
        try:
            graph_exec = check(cudart.cudaGraphInstantiate(graph, 0))
        except RuntimeError:
            check(cudart.cudaGraphDestroy(graph))
            raise
        return cls(graph, graph_exec)

    def launch(self, stream: Stream) -> None:
        check(cudart.cudaGraphLaunch(self.graph_exec, stream.handle))

    def free(self) -> None:
        if self.graph_exec is not None:
            check(cudart.cudaGraphExecDestroy(self.graph_exec))
            self.graph_exec = None
        if self.graph is not None:
            check(cudart.cudaGraphDestroy(self.graph))
            self.graph = None
