"""TensorRT backend: deserialises an engine, loads the MSDA plugin, runs on a CUDA stream.

Uses TensorRT's Python API and cuda-python for memory and streams (no torch, no pycuda).
Tensor-address execution (`execute_async_v3`) works on TensorRT 8.6 and 10.x alike.

- device: "cuda" or "cuda:N" (the engine runs on the GPU it was built for). TensorRT has no CPU
  device; "CPU", the runtime's default device string, is read as cuda:0 (logged).
- Inputs are staged in pinned host memory and outputs copied back into pinned memory, so the
  copies are asynchronous and `infer_async` returns before the GPU is done. One request is in
  flight at a time: a new one first settles the previous (its outputs stay valid).
- Batches larger than the engine's optimisation profile allows are run in chunks, smaller ones
  padded to the profile's minimum (outputs are batch-first and trimmed); other dynamic
  dimensions are checked against the profile.
- `cuda_graph=True` (opt-in) captures the engine's enqueue into a CUDA graph per input shape and
  replays it; an engine that cannot be captured falls back to plain enqueues (logged once).
- `close()` (and a finaliser, if the backend is garbage-collected unclosed) frees every device
  buffer, pinned buffer, graph and the stream.
"""
from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from runtime.backends.base import ArtifactError, Backend, InputError, TensorSpec
from runtime.manifest import Manifest
from runtime.safety import custom_op_library

try:
    import tensorrt as trt
except ImportError as e:
    raise ImportError(f"tensorrt is not installed ({e})") from e

from runtime.backends import cuda_memory as cm
from runtime.backends.trt_plugins import init_builtin_plugins, load_plugin_library

log = logging.getLogger(__name__)
PLUGIN_ENV = "EDGEDET_TRT_PLUGIN"
OPTIONS = ("cuda_graph",)


def _find_plugin(path: Path, manifest: Optional[Manifest]) -> Optional[Path]:
    lib_name = (manifest.custom_ops.get("tensorrt") if manifest else None) or ""
    if not lib_name:
        return None
    import os

    env = Path(os.environ.get(PLUGIN_ENV, "") or "/nonexistent")
    lib = custom_op_library(lib_name, path, [env] if env.is_dir() else [], what="TensorRT plugin")  # refuses paths
    if lib is None and env.is_file():
        lib = env  # the user's own explicit choice
    if lib is None:
        raise ArtifactError(
            f"{path.name} needs the TensorRT plugin {lib_name}, not found next to it or in ${PLUGIN_ENV}; "
            "build it with converters/tensorrt/plugins/msda/build.sh and copy it beside the engine"
        )
    return lib


class _Resources:
    """Every CUDA allocation of one backend; `release()` frees them all, once."""

    def __init__(self, device: int) -> None:
        self.device = device
        self.device_buffers: Dict[str, cm.DeviceBuffer] = {}
        self.pinned: Dict[str, cm.PinnedBuffer] = {}
        self.graphs: Dict[Any, cm.CudaGraph] = {}
        self.stream: Optional[cm.Stream] = None

    def drop_graphs(self) -> None:
        for g in self.graphs.values():
            g.free()
        self.graphs.clear()

    def release(self) -> None:
        """Free everything; a failing step (a sticky CUDA error) does not stop the others, the first error is raised."""
        errors: List[BaseException] = []

        def attempt(fn, *args) -> None:
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        attempt(cm.set_device, self.device)
        if self.stream is not None:
            attempt(self.stream.synchronize)  # nothing may still read or write the buffers
        for g in self.graphs.values():
            attempt(g.free)
        self.graphs.clear()
        for buf in list(self.device_buffers.values()) + list(self.pinned.values()):
            attempt(buf.free)
        self.device_buffers.clear()
        self.pinned.clear()
        if self.stream is not None:
            attempt(self.stream.close)
            self.stream = None
        if errors:
            raise errors[0]


class _Request:
    """A request in flight: pinned output views until settled, then owned copies."""

    def __init__(self, outputs: Dict[str, np.ndarray], stream: cm.Stream) -> None:
        self.outputs, self.stream = outputs, stream
        self.result: Optional[Dict[str, np.ndarray]] = None

    def settle(self) -> Dict[str, np.ndarray]:
        if self.result is None:
            self.stream.synchronize()
            self.result = {k: v.copy() for k, v in self.outputs.items()}
            self.outputs = {}
        return self.result


class TensorRTBackend(Backend):
    """device: "cuda" or "cuda:N". Options: cuda_graph=False."""

    name = "tensorrt"

    def _load(self, path: Path, manifest: Optional[Manifest], device: str, **options: Any) -> None:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(f"unknown TensorRT backend options {unknown}; valid: {', '.join(OPTIONS)}")
        if device.strip().upper() in ("", "CPU"):
            log.info("TensorRT runs on a GPU: device '%s' read as cuda:0", device)
            device = "cuda:0"
        index = cm.parse_device(device)
        count = cm.device_count()
        if index >= count:
            raise ValueError(f"device '{device}' asked for GPU {index}, but this machine has {count} CUDA device(s)")
        self.device = f"cuda:{index}"
        cm.set_device(index)
        self._res = _Resources(index)
        self._finalizer = weakref.finalize(self, self._res.release)
        self._cuda_graph = bool(options.get("cuda_graph", False))
        self._graph_ok = self._cuda_graph
        self._pending: Optional[_Request] = None
        self._logger = trt.Logger(trt.Logger.WARNING)
        init_builtin_plugins(trt, self._logger)
        plugin = _find_plugin(path, manifest)
        if plugin is not None:
            load_plugin_library(trt, plugin)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ArtifactError(
                f"TensorRT could not deserialise {path}: the file is truncated/corrupt, or was built with another "
                "TensorRT version or GPU; rebuild it on this device with `edgedet export --format tensorrt`"
            )
        self._engine = engine
        self._context = engine.create_execution_context()
        self._res.stream = cm.Stream()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = lambda n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT  # noqa: E731
        self._inputs = [n for n in names if is_input(n)]
        self._outputs = [n for n in names if not is_input(n)]
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._shapes = {n: tuple(int(d) for d in engine.get_tensor_shape(n)) for n in names}
        # (min, max) shapes of the dynamic inputs in optimisation profile 0
        self._profiles: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {}
        for n in self._inputs:
            if any(d < 0 for d in self._shapes[n]):
                lo, _, hi = engine.get_tensor_profile_shape(n, 0)
                self._profiles[n] = (tuple(int(d) for d in lo), tuple(int(d) for d in hi))

    @property
    def input_specs(self) -> List[TensorSpec]:
        return [TensorSpec(n, tuple(None if d < 0 else d for d in self._shapes[n]), self._dtypes[n]) for n in self._inputs]

    @property
    def output_names(self) -> List[str]:
        return list(self._outputs)

    @property
    def batch_limits(self) -> Tuple[int, int]:
        """(min, max) batch one enqueue takes; equal for a static batch."""
        first = self._inputs[0]
        if first in self._profiles and self._shapes[first][0] < 0:
            lo, hi = self._profiles[first]
            return lo[0], hi[0]
        return self._shapes[first][0], self._shapes[first][0]

    def check_feeds(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        feeds = super().check_feeds(feeds)
        for name, (lo, hi) in self._profiles.items():
            shape = feeds[name].shape
            for axis in range(1, len(shape)):  # the batch axis is chunked/padded instead
                if not lo[axis] <= shape[axis] <= hi[axis]:
                    raise InputError(
                        f"input '{name}' has shape {list(shape)}; the engine's profile allows {list(lo)} to {list(hi)} "
                        "(rebuild the engine with a wider profile)"
                    )
        return feeds

    # -- memory ---------------------------------------------------------------------------
    def _device_buffer(self, name: str, nbytes: int) -> cm.DeviceBuffer:
        buf = self._res.device_buffers.get(name)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                buf.free()
            buf = self._res.device_buffers[name] = cm.DeviceBuffer(nbytes)
            self._res.drop_graphs()  # captured graphs hold the old addresses
        return buf

    def _pinned(self, name: str, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        buf = self._res.pinned.get(name)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                buf.free()
            buf = self._res.pinned[name] = cm.PinnedBuffer(nbytes)
        return buf.view(shape, dtype)

    # -- execution ------------------------------------------------------------------------
    def infer_async(self, feeds: Dict[str, np.ndarray]) -> Any:
        """Enqueue copies and execution; `wait(handle)` returns the outputs. Batches outside the
        profile are run synchronously in chunks (the handle is then already settled)."""
        feeds = self.check_feeds(feeds)
        lo, hi = self.batch_limits
        n = feeds[self._inputs[0]].shape[0]
        if self._inputs[0] in self._profiles and not lo <= n <= hi:
            request = _Request({}, self._res.stream)
            request.result = self._infer_chunked(feeds, lo, hi)
            return request
        return self._enqueue(feeds)

    def wait(self, handle: _Request) -> Dict[str, np.ndarray]:
        result = handle.settle()
        if self._pending is handle:
            self._pending = None
        return result

    def _infer(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return self.wait(self.infer_async(feeds))

    def _infer_chunked(self, feeds: Dict[str, np.ndarray], lo: int, hi: int) -> Dict[str, np.ndarray]:
        n = feeds[self._inputs[0]].shape[0]
        parts: List[Dict[str, np.ndarray]] = []
        for start in range(0, n, hi):
            chunk = {k: v[start:start + hi] for k, v in feeds.items()}
            size = chunk[self._inputs[0]].shape[0]
            if size < lo:  # pad with copies of the last item; their outputs are dropped
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], lo - size, axis=0)]) for k, v in chunk.items()}
            out = self.wait(self._enqueue(chunk))
            parts.append({k: v[:size] for k, v in out.items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in self._outputs}

    def _enqueue(self, feeds: Dict[str, np.ndarray]) -> _Request:
        if self._pending is not None:  # its pinned outputs are about to be reused
            self.wait(self._pending)
        if self._res.stream is None:
            raise RuntimeError("this TensorRT backend is closed")
        cm.set_device(self._res.device)
        stream = self._res.stream
        for name in self._inputs:
            arr = feeds[name]
            self._context.set_input_shape(name, tuple(arr.shape))
            staged = self._pinned(name, arr.shape, self._dtypes[name])
            np.copyto(staged, arr)
            buf = self._device_buffer(name, arr.nbytes)
            buf.copy_from_host(staged, stream)
            self._context.set_tensor_address(name, buf.ptr)
        outputs: Dict[str, np.ndarray] = {}
        for name in self._outputs:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output '{name}' has a data-dependent shape {list(shape)}, which this backend "
                                   "does not support; export with a fixed top-k")
            outputs[name] = self._pinned(name, shape, self._dtypes[name])
            self._context.set_tensor_address(name, self._device_buffer(name, outputs[name].nbytes).ptr)
        self._execute(tuple(feeds[n].shape for n in self._inputs))
        for name, host in outputs.items():
            self._res.device_buffers[name].copy_to_host(host, stream)
        self._pending = _Request(outputs, stream)
        return self._pending

    def _execute(self, key: Tuple[Tuple[int, ...], ...]) -> None:
        stream = self._res.stream
        graph = self._res.graphs.get(key)
        if graph is not None:
            graph.launch(stream)
            return
        if not self._context.execute_async_v3(stream.handle):
            raise RuntimeError("TensorRT execution failed (see the TensorRT log above)")
        if self._graph_ok:  # this shape ran once (TensorRT's lazy set-up done): capture it for next time
            try:
                self._res.graphs[key] = cm.CudaGraph.capture(stream, lambda: self._context.execute_async_v3(stream.handle))
            except RuntimeError as e:
                self._graph_ok = False
                log.warning("CUDA graph capture is not possible for this engine (%s); running without it", e)

    def close(self) -> None:
        if getattr(self, "_finalizer", None) is not None:
            self._finalizer()  # frees everything, once
        self._pending = None
        self._context = None
        self._engine = None
