"""TensorRT backend: deserialises an engine, loads the MSDA plugin, runs on a CUDA stream.

Uses TensorRT's Python API and cuda-python for memory and streams (no torch, no pycuda).
Tensor-address execution (`execute_async_v3`) works on TensorRT 8.6 and 10.x alike.
"""
from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from runtime.backends.base import ArtifactError, Backend, TensorSpec
from runtime.manifest import Manifest
from runtime.safety import custom_op_library

try:
    import tensorrt as trt
except ImportError as e:
    raise ImportError(f"tensorrt is not installed ({e})") from e

from runtime.backends.cuda_memory import DeviceBuffer, Stream

log = logging.getLogger(__name__)
PLUGIN_ENV = "EDGEDET_TRT_PLUGIN"


def _load_plugin(path: Path, manifest: Optional[Manifest], logger) -> None:
    trt.init_libnvinfer_plugins(logger, "")
    lib_name = (manifest.custom_ops.get("tensorrt") if manifest else None) or ""
    if not lib_name:
        return
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
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)  # its static initialiser registers the creator


class TensorRTBackend(Backend):
    """device: "cuda" or "cuda:N" (the engine runs on the GPU it was built for)."""

    name = "tensorrt"

    def _load(self, path: Path, manifest: Optional[Manifest], device: str, **options: Any) -> None:
        self._logger = trt.Logger(trt.Logger.WARNING)
        _load_plugin(path, manifest, self._logger)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ArtifactError(
                f"TensorRT could not deserialise {path}: the file is truncated/corrupt, or was built with another "
                "TensorRT version or GPU; rebuild it on this device with `edgedet export --format tensorrt`"
            )
        self._engine = engine
        self._context = engine.create_execution_context()
        self._stream = Stream()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = lambda n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT  # noqa: E731
        self._inputs = [n for n in names if is_input(n)]
        self._outputs = [n for n in names if not is_input(n)]
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._buffers: Dict[str, DeviceBuffer] = {}

    @property
    def input_specs(self) -> List[TensorSpec]:
        specs = []
        for n in self._inputs:
            shape = tuple(None if d < 0 else int(d) for d in self._engine.get_tensor_shape(n))
            specs.append(TensorSpec(n, shape, self._dtypes[n]))
        return specs

    @property
    def output_names(self) -> List[str]:
        return list(self._outputs)

    def _buffer(self, name: str, nbytes: int) -> DeviceBuffer:
        buf = self._buffers.get(name)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                buf.free()
            buf = self._buffers[name] = DeviceBuffer(nbytes)
        return buf

    def infer_async(self, feeds: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], Stream]:
        """Enqueue copies and execution on the backend's stream; `wait(handle)` returns the outputs."""
        return self._enqueue(self.check_feeds(feeds))

    def _enqueue(self, feeds: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], Stream]:
        for name in self._inputs:
            arr = feeds[name]
            self._context.set_input_shape(name, tuple(arr.shape))
            buf = self._buffer(name, arr.nbytes)
            buf.copy_from_host(arr, self._stream)
            self._context.set_tensor_address(name, buf.ptr)
        outputs: Dict[str, np.ndarray] = {}
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            out = np.empty(shape, dtype=self._dtypes[name])
            buf = self._buffer(name, out.nbytes)
            self._context.set_tensor_address(name, buf.ptr)
            outputs[name] = out
        if not self._context.execute_async_v3(self._stream.handle):
            raise RuntimeError("TensorRT execution failed (see the TensorRT log above)")
        for name, out in outputs.items():
            self._buffers[name].copy_to_host(out, self._stream)
        return outputs, self._stream

    def wait(self, handle: Tuple[Dict[str, np.ndarray], Stream]) -> Dict[str, np.ndarray]:
        outputs, stream = handle
        stream.synchronize()
        return outputs

    def _infer(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return self.wait(self._enqueue(feeds))

    def close(self) -> None:
        for buf in self._buffers.values():
            buf.free()
        self._buffers.clear()
        if getattr(self, "_stream", None) is not None:
            self._stream.close()
            self._stream = None
        self._context = None
        self._engine = None
