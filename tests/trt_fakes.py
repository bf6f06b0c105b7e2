"""Stand-ins for `tensorrt` and cuda-python's runtime, to test the TensorRT backend's and
calibrator's bookkeeping on a CPU: device memory is host memory behind integer handles, and
every allocation and free is counted. `install(monkeypatch)` puts them in `sys.modules` and
returns freshly imported backend modules bound to them."""
from __future__ import annotations

import ctypes
import importlib
import sys
import types
from typing import Callable, Dict, List

import numpy as np


class FakeCudart(types.ModuleType):
    """The subset of cuda.bindings.runtime that runtime/backends/cuda_memory.py uses."""

    class cudaMemcpyKind:  # noqa: N801 (cuda-python's names)
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode:  # noqa: N801
        cudaStreamCaptureModeThreadLocal = 1

    def __init__(self, num_devices: int = 2) -> None:
        super().__init__("cuda.bindings.runtime")
        self.num_devices = num_devices
        self.device = 0
        self.device_mem: Dict[int, bytearray] = {}
        self.host_mem: Dict[int, ctypes.Array] = {}
        self.next_ptr = 0x10000
        self.streams: set = set()
        self.capturing: Dict[int, List[Callable]] = {}
        self.graphs: Dict[int, List[Callable]] = {}
        self.execs: Dict[int, List[Callable]] = {}
        self.log: List[str] = []

    def _new(self) -> int:
        self.next_ptr += 0x10000
        return self.next_ptr

    def cudaGetErrorName(self, err):  # noqa: N802
        return 0, b"cudaErrorFake"

    def cudaGetDeviceCount(self):  # noqa: N802
        return 0, self.num_devices

    def cudaSetDevice(self, index):  # noqa: N802
        if index >= self.num_devices:
            return (101,)
        self.device = index
        return (0,)

    def cudaMalloc(self, nbytes):  # noqa: N802
        ptr = self._new()
        self.device_mem[ptr] = bytearray(nbytes)
        return 0, ptr

    def cudaFree(self, ptr):  # noqa: N802
        del self.device_mem[ptr]
        return (0,)

    def cudaMallocHost(self, nbytes):  # noqa: N802
        buf = (ctypes.c_byte * nbytes)()
        ptr = ctypes.addressof(buf)
        self.host_mem[ptr] = buf
        return 0, ptr

    def cudaFreeHost(self, ptr):  # noqa: N802
        del self.host_mem[ptr]
        return (0,)

    def _copy(self, dst, src, nbytes, kind):
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            ctypes.memmove((ctypes.c_char * nbytes).from_buffer(self.device_mem[dst]), src, nbytes)
        else:
            ctypes.memmove(dst, (ctypes.c_char * nbytes).from_buffer(self.device_mem[src]), nbytes)

    def cudaMemcpy(self, dst, src, nbytes, kind):  # noqa: N802
        self._copy(dst, src, nbytes, kind)
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):  # noqa: N802
        assert stream in self.streams
        # asynchronous copies must come from / go to pinned memory
        host = src if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice else dst
        self.log.append("pinned" if any(p <= host < p + len(b) for p, b in self.host_mem.items()) else "pageable")
        self._copy(dst, src, nbytes, kind)
        return (0,)

    def cudaStreamCreate(self):  # noqa: N802
        s = self._new()
        self.streams.add(s)
        return 0, s

    def cudaStreamDestroy(self, s):  # noqa: N802
        self.streams.remove(s)
        return (0,)

    def cudaStreamSynchronize(self, s):  # noqa: N802
        return (0,)

    def cudaStreamBeginCapture(self, s, mode):  # noqa: N802
        self.capturing[s] = []
        return (0,)

    def cudaStreamEndCapture(self, s):  # noqa: N802
        g = self._new()
        self.graphs[g] = self.capturing.pop(s)
        return 0, g

    def cudaGraphInstantiate(self, g, flags):  # noqa: N802
        e = self._new()
        self.execs[e] = list(self.graphs[g])
        return 0, e

    def cudaGraphLaunch(self, e, s):  # noqa: N802
        self.log.append("graph")
        for fn in self.execs[e]:
            fn()
        return (0,)

    def cudaGraphExecDestroy(self, e):  # noqa: N802
        del self.execs[e]
        return (0,)

    def cudaGraphDestroy(self, g):  # noqa: N802
        del self.graphs[g]
        return (0,)

    def live(self) -> Dict[str, int]:
        return {"device": len(self.device_mem), "pinned": len(self.host_mem), "streams": len(self.streams),
                "graphs": len(self.graphs) + len(self.execs)}


class FakeEngine:
    """Input "images" [-1, 3, H, W] float32 (profile batch 2..4), output "scores" [-1, 2] = per-image
    (sum, max); or a static batch when `static_batch` is set."""

    def __init__(self, cudart: FakeCudart, hw=(4, 5), profile=(2, 3, 4), static_batch: int = 0):
        self.cudart, self.hw, self.profile, self.static_batch = cudart, hw, profile, static_batch
        self.num_io_tensors = 2
        self.executions = 0

    def get_tensor_name(self, i):
        return ["images", "scores"][i]

    def get_tensor_mode(self, name):
        return FakeTensorRT.TensorIOMode.INPUT if name == "images" else FakeTensorRT.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return "float32"

    def get_tensor_shape(self, name):
        b = self.static_batch or -1
        return (b, 3) + self.hw if name == "images" else (b, 2)

    def get_tensor_profile_shape(self, name, index):
        assert name == "images" and index == 0
        return [(b, 3) + self.hw for b in self.profile]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name, shape):
        lo, hi = self.engine.profile[0], self.engine.profile[2]
        if not self.engine.static_batch:
            assert lo <= shape[0] <= hi, f"batch {shape[0]} outside the profile {lo}..{hi}"
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return (self.shapes["images"][0], 2)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        cud = self.engine.cudart
        shape, src, dst = self.shapes["images"], self.addresses["images"], self.addresses["scores"]

        def run():
            n = int(np.prod(shape))
            x = np.frombuffer(cud.device_mem[src], dtype=np.float32, count=n).reshape(shape)
            out = np.stack([x.reshape(shape[0], -1).sum(1), x.reshape(shape[0], -1).max(1)], 1).astype(np.float32)
            cud.device_mem[dst][: out.nbytes] = out.tobytes()
            self.engine.executions += 1

        if stream in cud.capturing:
            cud.capturing[stream].append(run)
        else:
            run()
        return True


class FakeTensorRT(types.ModuleType):
    __version__ = "10.13.0"

    class TensorIOMode:
        INPUT, OUTPUT = 1, 2

    class Logger:
        WARNING = 2

        def __init__(self, level=None):
            self.level = level

    class IInt8EntropyCalibrator2:
        def __init__(self):
            pass

    def __init__(self, engine_factory):
        super().__init__("tensorrt")
        self.engine_factory = engine_factory
        self.registry = FakeRegistry()
        self.init_calls = 0
        outer = self

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                return outer.engine_factory() if data.startswith(b"ENGINE") else None

        self.Runtime = Runtime

    def nptype(self, dt):
        return np.float32

    def init_libnvinfer_plugins(self, logger, ns):
        self.init_calls += 1
        return True

    def get_plugin_registry(self):
        return self.registry


class FakeRegistry:
    """Registers one creator per library loaded, as TensorRT does; duplicates are kept (and counted)."""

    def __init__(self):
        self.creators: List[tuple] = []
        self.loaded: List[str] = []

    def load_library(self, path):
        self.loaded.append(path)
        self.creators.append(("MultiScaleDeformableAttention", "1", ""))
        return object()

    def get_creator(self, name, version, namespace):
        return next((c for c in self.creators if c[:2] == (name, version)), None)


MODULES = ("runtime.backends.cuda_memory", "runtime.backends.trt_plugins", "runtime.backends.tensorrt")


def install(monkeypatch, engine_kwargs=None, num_devices: int = 2):
    """Fake tensorrt + cuda-python in sys.modules; returns (trt, cudart, backend module, cuda_memory module)."""
    cudart = FakeCudart(num_devices)
    trt = FakeTensorRT(lambda: FakeEngine(cudart, **(engine_kwargs or {})))
    cuda_pkg, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda_pkg.bindings, bindings.runtime = bindings, cudart
    for name, mod in (("tensorrt", trt), ("cuda", cuda_pkg), ("cuda.bindings", bindings), ("cuda.bindings.runtime", cudart)):
        monkeypatch.setitem(sys.modules, name, mod)
    import runtime.backends as package

    for name in MODULES:
        # recorded for undo (the original module, or its absence), then removed so it re-imports
        monkeypatch.setitem(sys.modules, name, types.ModuleType("placeholder"))
        del sys.modules[name]
        monkeypatch.setattr(package, name.rsplit(".", 1)[1], None, raising=False)
        delattr(package, name.rsplit(".", 1)[1])
    cuda_memory = importlib.import_module("runtime.backends.cuda_memory")
    backend = importlib.import_module("runtime.backends.tensorrt")
    return trt, cudart, backend, cuda_memory
