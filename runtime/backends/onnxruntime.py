"""ONNX Runtime backend: CPU by default; CUDA or TensorRT execution providers when asked.

device: "CPU" | "cuda" | "cuda:N" | "GPU" (= cuda) | "tensorrt" | "tensorrt:N". A custom-op
library named in `manifest.custom_ops["onnxruntime"]` is registered from next to the artifact.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from runtime.backends.base import ArtifactError, Backend, BackendUnavailableError, TensorSpec
from runtime.manifest import Manifest, ManifestError, METADATA_KEY
from runtime.safety import custom_op_library

try:
    import onnxruntime as ort
except ImportError as e:  # re-raised by the registry with the install hint
    raise ImportError(f"onnxruntime is not installed ({e})") from e

log = logging.getLogger(__name__)

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def providers_for(device: str) -> List[Any]:
    """Execution providers (with options) for a device string, best first, CPU last."""
    kind, _, index = device.lower().partition(":")
    device_id = int(index) if index else 0
    if kind == "cpu":
        wanted = []
    elif kind in ("cuda", "gpu"):
        wanted = [("CUDAExecutionProvider", {"device_id": device_id})]
    elif kind in ("tensorrt", "trt"):
        wanted = [("TensorrtExecutionProvider", {"device_id": device_id}), ("CUDAExecutionProvider", {"device_id": device_id})]
    else:
        raise ValueError(f"onnxruntime backend: unknown device '{device}'; use CPU, cuda, cuda:N or tensorrt")
    available = ort.get_available_providers()
    for name, _ in wanted[:1]:
        if name not in available:
            raise BackendUnavailableError(
                f"onnxruntime has no {name} (available: {', '.join(available)}); "
                "install onnxruntime-gpu matching your CUDA, or use device='CPU'"
            )
    return [p for p in wanted if p[0] in available] + ["CPUExecutionProvider"]


class _AsyncRun:
    """One `run_async` in flight: ORT calls `done` from its pool thread; `wait` blocks on the event."""

    def __init__(self, feeds: Dict[str, np.ndarray]) -> None:
        self.feeds = feeds  # kept alive until ORT has finished reading them
        self.event = threading.Event()
        self.outputs: Optional[List[np.ndarray]] = None
        self.error = ""

    def done(self, outputs: List[np.ndarray], _user_data: Any, error: str) -> None:
        self.outputs, self.error = outputs, error
        self.event.set()


class OnnxRuntimeBackend(Backend):
    """options: threads (intra-op threads, 0 = ORT default), inter_op_threads, optimization ("all"|"basic"|"extended"|"disable"),
    spin (let idle pool threads busy-wait: lowest latency on an otherwise idle multi-core box; default off),
    async_run (`infer_async` through ORT's `run_async`, returning before the run ends; None = on for the CUDA/TensorRT
    providers, whose runs leave the CPU idle, off on CPU, where a run inside ORT's pool was ~10-20% slower than `run`
    on the calling thread; needs ORT >= 1.16 and an intra-op pool of 2+ threads)."""

    name = "onnxruntime"

    def _load(self, path: Path, manifest: Optional[Manifest], device: str, threads: int = 0, inter_op_threads: int = 0,
              optimization: str = "all", spin: bool = False, async_run: Optional[bool] = None) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = int(inter_op_threads)
        if not spin:
            # ORT's pool busy-waits after each run by default, starving the pre/postprocessing that
            # follows on the same few cores; an edge app is better off with idle threads sleeping.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if optimization not in levels:
            raise ValueError(f"unknown optimization '{optimization}'; valid: {', '.join(levels)}")
        opts.graph_optimization_level = levels[optimization]
        lib = (manifest.custom_ops.get("onnxruntime") if manifest else None) or ""
        if lib:
            lib_path = custom_op_library(lib, path, what="ONNX Runtime custom-op library")  # refuses paths
            if lib_path is None:
                raise ArtifactError(f"{path.name} needs the ONNX Runtime custom-op library {lib}, not found in {path.parent}")
            opts.register_custom_ops_library(str(lib_path))
        providers = providers_for(device)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf types
            raise ArtifactError(
                f"onnxruntime could not load {path}: {str(e).splitlines()[0][:300]}; "
                "the file may be truncated or corrupt (re-export it), or use custom ops this runtime lacks"
            ) from e
        self._inputs = [
            TensorSpec(i.name, tuple(d if isinstance(d, int) and d > 0 else None for d in i.shape), np.dtype(_DTYPES.get(i.type, np.float32)))
            for i in self.session.get_inputs()
        ]
        self._outputs = [o.name for o in self.session.get_outputs()]
        gpu = any(p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for p in self.session.get_providers())
        can_async = hasattr(self.session, "run_async") and int(threads) != 1  # ORT refuses RunAsync without a pool
        if async_run and not can_async:
            raise ValueError("async_run=True needs onnxruntime >= 1.16 and threads != 1 (RunAsync runs in the intra-op pool)")
        self.async_run = bool(can_async if async_run is None and gpu else async_run)
        log.debug("onnxruntime %s providers %s", path.name, self.session.get_providers())

    @property
    def providers(self) -> List[str]:
        return self.session.get_providers()

    @property
    def input_specs(self) -> List[TensorSpec]:
        return list(self._inputs)

    @property
    def output_names(self) -> List[str]:
        return list(self._outputs)

    def output_shapes(self) -> Dict[str, Tuple[Optional[int], ...]]:
        return {o.name: tuple(d if isinstance(d, int) and d > 0 else None for d in o.shape) for o in self.session.get_outputs()}

    def embedded_manifest(self) -> Optional[Manifest]:
        text = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if not text:
            return None
        try:
            return Manifest.from_json(text)
        except ManifestError as e:
            raise ArtifactError(f"{self.path}: embedded manifest is invalid: {e}") from e

    def _infer(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return dict(zip(self._outputs, self.session.run(self._outputs, feeds)))

    def infer_async(self, feeds: Dict[str, np.ndarray]) -> Any:
        """With `async_run`: start `run_async` and return at once; otherwise run here (the base class's way)."""
        if not self.async_run:
            return super().infer_async(feeds)
        run = _AsyncRun(self.check_feeds(feeds))
        self.session.run_async(self._outputs, run.feeds, run.done, None)
        return run

    def wait(self, handle: Any) -> Dict[str, np.ndarray]:
        if not isinstance(handle, _AsyncRun):
            return super().wait(handle)
        handle.event.wait()
        if handle.error:
            raise RuntimeError(f"onnxruntime run failed: {str(handle.error).splitlines()[0][:300]}")
        return dict(zip(self._outputs, handle.outputs))

    def close(self) -> None:
        self.session = None
