"""OpenVINO backend: CPU / GPU / NPU, asynchronous infer requests, fused-MSDA extension loading.

Inference precision: "auto" (the default) runs bf16 on a CPU with AMX-BF16/AVX512-BF16 when the
artifact's manifest records that bf16 passed its parity check, f32 elsewhere (`runtime.precision`;
the choice and its reason are logged once). "f32" is exact (matches the ONNX reference); "f16",
"bf16", or None for the device default trade accuracy for speed.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np

from runtime.backends.base import ArtifactError, Backend, TensorSpec
from runtime.manifest import Manifest, ManifestError, METADATA_KEY
from runtime.precision import PrecisionChoice, announce, choose_precision, cpu_bf16_capability
from runtime.safety import custom_op_library

try:
    import openvino as ov
except ImportError as e:  # re-raised by the registry with the install hint
    raise ImportError(f"openvino is not installed ({e})") from e

log = logging.getLogger(__name__)

EXTENSION_ENV = "EDGEDET_OV_EXTENSION"
DEFAULT_EXTENSION = "libedgedet_ov_msda.so"


def find_extension(artifact: Path, manifest: Optional[Manifest]) -> Optional[Path]:
    """The fused-op library the artifact needs: next to it first, then $EDGEDET_OV_EXTENSION.

    Returns None when the manifest names no library; raises ArtifactError when it names one
    that cannot be found.
    """
    lib = (manifest.custom_ops.get("openvino") if manifest else None) or ""
    if not lib:
        return None
    env = os.environ.get(EXTENSION_ENV, "")
    env_path = Path(env) if env else None
    # Only a bare name inside the artifact's folder or the configured extension folder (never a path
    # from the manifest); $EDGEDET_OV_EXTENSION naming a file is the user's own explicit choice.
    found = custom_op_library(lib, artifact, [env_path] if env_path is not None and env_path.is_dir() else [],
                              what="OpenVINO extension")
    if found is not None:
        return found
    if env_path is not None and env_path.is_file():
        return env_path
    raise ArtifactError(
        f"{artifact.name} uses the fused MSDA op and needs the OpenVINO extension {lib}, not found in "
        f"{artifact.parent}" + (f" nor at ${EXTENSION_ENV}={env}" if env else f" and ${EXTENSION_ENV} is not set")
        + "; build the extension (converters/openvino) and set $EDGEDET_OV_EXTENSION, or re-export with msda=\"gather\""
    )


def _port_name(port: Any) -> str:
    """The port's graph-level name. A port can carry several names when conversion folds a node into
    an input (e.g. an identity Expand): prefer the exported name over the tracer's internal '/node_output'."""
    names = sorted(port.get_names(), key=lambda n: (n.startswith("/"), n))
    return names[0] if names else port.get_any_name()


def _reason(e: BaseException) -> str:
    """The informative part of an OpenVINO exception (its first lines only name C++ source files)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("Exception from src/")]
    return " ".join(lines)[:400] or type(e).__name__


class OpenVINOBackend(Backend):
    """options: precision ("auto" default: bf16 where the CPU and the artifact's parity record allow, else
    f32; "f32", "f16", "bf16", None = the device default), threads, hint ("LATENCY"|"THROUGHPUT"), num_requests,
    static_batch (N > 0: reshape a dynamic-batch model to batch N before compiling, the fastest CPU path when
    the batch size is known, e.g. one frame per camera; Detector.batch pads partial batches)."""

    name = "openvino"

    def _load(self, path: Path, manifest: Optional[Manifest], device: str, precision: Optional[str] = "auto",
              threads: int = 0, hint: str = "LATENCY", num_requests: int = 2, static_batch: int = 0) -> None:
        device = device.upper()
        if device.split(".")[0] not in ("CPU", "GPU", "NPU", "AUTO", "HETERO", "MULTI"):
            raise ValueError(f"openvino backend: unknown device '{device}'; use CPU, GPU, GPU.N, NPU or AUTO")
        self.core = ov.Core()
        ext = find_extension(path, manifest)
        if ext is None and os.environ.get(EXTENSION_ENV) and manifest is None:
            # No manifest to say so: the artifact may still need the extension to parse.
            env = Path(os.environ[EXTENSION_ENV])
            ext = env / DEFAULT_EXTENSION if env.is_dir() else env
            ext = ext if ext.is_file() else None
        if ext is not None:
            try:
                self.core.add_extension(str(ext))
            except Exception as e:
                raise ArtifactError(f"could not load the OpenVINO extension {ext}: {e}; rebuild it for this OpenVINO version") from e
        try:
            self.model = self.core.read_model(str(path))
        except Exception as e:
            msg = _reason(e)
            hint_ext = " If it uses the fused MSDA op, load the extension ($EDGEDET_OV_EXTENSION) or re-export with msda=\"gather\"."
            raise ArtifactError(f"openvino could not read {path}: {msg}; the .xml/.bin pair may be truncated or corrupt.{hint_ext}") from e
        if static_batch:
            self._reshape_batch(path, int(static_batch))
        config: Dict[str, Any] = {"PERFORMANCE_HINT": hint}
        self.precision_choice = self._choose_precision(precision, device, manifest)
        if self.precision_choice.precision and device.startswith(("CPU", "GPU")):
            config["INFERENCE_PRECISION_HINT"] = self.precision_choice.precision
        if threads and device.startswith("CPU"):
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if device.split(".")[0] not in self.core.available_devices and device.split(".")[0] not in ("AUTO", "HETERO", "MULTI"):
            raise RuntimeError(f"OpenVINO device {device} is not available here (available: {', '.join(self.core.available_devices)})")
        try:
            self.compiled = self.core.compile_model(self.model, device, config)
        except Exception as e:
            raise ArtifactError(f"openvino could not compile {path.name} for {device}: {_reason(e)}") from e
        self.precision_choice = self._compiled_precision(self.precision_choice)
        announce(str(path), self.precision_choice)
        self._inputs = [
            TensorSpec(
                _port_name(p),
                tuple(d.get_length() if d.is_static else None for d in p.get_partial_shape()),
                np.dtype(p.get_element_type().to_dtype()),
            )
            for p in self.model.inputs
        ]
        # Names from the read model, not the compiled one: the device's transformations may fuse an
        # output's producer into an earlier node whose tensor names then join the port's (on ARM the
        # blob graph's `scores` port also carries `present`). The compiled outputs keep the model's order.
        self._outputs = [_port_name(p) for p in self.model.outputs]
        self._sync_request = self.compiled.create_infer_request()  # infer() never waits on an async one
        self._sync_lock = threading.Lock()  # one request: callers on several threads take turns
        self._requests = [self.compiled.create_infer_request() for _ in range(max(1, int(num_requests)))]
        self._free: Deque[Any] = deque(self._requests)
        log.debug("openvino %s on %s config %s", path.name, device, config)

    def _choose_precision(self, precision: Optional[str], device: str, manifest: Optional[Manifest]) -> PrecisionChoice:
        if str(precision).lower() == "auto" and manifest is None:
            try:  # no sidecar: the parity record embedded in the model
                manifest = self.embedded_manifest()
            except ArtifactError:
                manifest = None
        capability = cpu_bf16_capability(self.core) if str(precision).lower() == "auto" and device.startswith("CPU") else None
        return choose_precision(precision, device, manifest, capability)

    def _compiled_precision(self, choice: PrecisionChoice) -> PrecisionChoice:
        """What the device actually compiled at: a CPU without bf16 silently runs a bf16 request in f32."""
        try:
            value = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        except Exception:  # devices that do not report it
            return choice
        actual = str(value.get_type_name() if hasattr(value, "get_type_name") else value).lower()  # an ov.Type: "f32"
        if not choice.precision or actual == choice.precision or actual not in ("f32", "bf16", "f16"):
            return PrecisionChoice(choice.precision or actual, choice.reason, choice.requested)
        return PrecisionChoice(actual, f"{choice.reason}; the device compiled it at {actual}", choice.requested)

    @property
    def inference_precision(self) -> str:
        """The precision the model runs at, and why: e.g. "f32 (auto: the CPU has neither ...)"."""
        c = self.precision_choice
        return f"{c.precision} ({'auto: ' + c.reason if c.requested == 'auto' else c.reason})"

    def _reshape_batch(self, path: Path, batch: int) -> None:
        if batch < 1:
            raise ValueError(f"static_batch must be a positive batch size, got {batch}")
        shapes = {}
        for port in self.model.inputs:
            shape = port.get_partial_shape()
            if shape.rank.is_dynamic or len(shape) == 0:
                continue
            first = shape[0]
            if first.is_static and first.get_length() != batch:
                raise ArtifactError(f"{path.name} has a fixed batch of {first.get_length()}; static_batch={batch} needs an "
                                    "export with a dynamic batch (`edgedet export --dynamic-batch`)")
            shapes[port] = ov.PartialShape([batch] + [d for d in list(shape)[1:]])
        try:
            self.model.reshape(shapes)
        except Exception as e:
            raise ArtifactError(f"openvino could not reshape {path.name} to batch {batch}: {_reason(e)}") from e

    @property
    def input_specs(self) -> List[TensorSpec]:
        return list(self._inputs)

    @property
    def output_names(self) -> List[str]:
        return list(self._outputs)

    def output_shapes(self) -> Dict[str, Tuple[Optional[int], ...]]:
        return {name: tuple(d.get_length() if d.is_static else None for d in p.get_partial_shape())
                for name, p in zip(self._outputs, self.compiled.outputs)}

    def embedded_manifest(self) -> Optional[Manifest]:
        if not self.model.has_rt_info([METADATA_KEY, "manifest"]):
            return None
        text = self.model.get_rt_info([METADATA_KEY, "manifest"]).astype(str)
        try:
            return Manifest.from_json(text)
        except ManifestError as e:
            raise ArtifactError(f"{self.path}: embedded manifest is invalid: {e}") from e

    def _read(self, request: Any) -> Dict[str, np.ndarray]:
        # Copy: the request's buffers are reused by its next inference.
        return {name: np.array(request.get_output_tensor(i).data) for i, name in enumerate(self._outputs)}

    def _infer(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        with self._sync_lock:
            self._sync_request.infer(feeds)
            return self._read(self._sync_request)

    def infer_async(self, feeds: Dict[str, np.ndarray]) -> Any:
        """Start on a free infer request; at most `num_requests` may be in flight before `wait`."""
        if not self._free:
            raise RuntimeError(f"all {len(self._requests)} OpenVINO infer requests are busy; call wait() on a handle first")
        request = self._free.popleft()
        request.start_async(self.check_feeds(feeds))
        return request

    @property
    def max_in_flight(self) -> int:
        return len(self._requests)

    def wait(self, handle: Any) -> Dict[str, np.ndarray]:
        handle.wait()
        try:
            return self._read(handle)
        finally:
            self._free.append(handle)

    def close(self) -> None:
        self._requests, self._free, self._sync_request = [], deque(), None
        self.compiled = None
        self.model = None
