"""Build a TensorRT engine from an ONNX file with the TensorRT Python API.

Optimisation profile for dynamic batch, workspace limit, timing cache, FP16, INT8 (entropy
calibration, or the explicit Q/DQ of a quantized ONNX), the MSDA plugin library loaded.
Works with TensorRT 8.6 (JetPack 5) and 10.x (JetPack 6).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Tuple

import numpy as np

from converters.formats import ExportError

log = logging.getLogger(__name__)


class TensorRTUnavailableError(ExportError):
    """TensorRT's Python package is not installed here."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailableError(
            "TensorRT is not installed on this machine. Build engines on the target device (Jetson: JetPack ships "
            "TensorRT; x86: pip install 'edgedet[tensorrt]'), or pass dry_run=True (CLI: --dry-run) to write only "
            f"the ONNX that would be built ({e})"
        ) from e
    return trt


@dataclass
class EngineOptions:
    precision: str = "fp16"  # fp32 | fp16 | int8
    dynamic_batch: bool = False
    max_batch: int = 8
    min_batch: int = 1
    opt_batch: int = 0  # 0: max_batch (TensorRT tunes kernels for opt; N streams -> opt = max = N)
    workspace_gb: float = 2.0
    timing_cache: Optional[Path] = None
    calibration_cache: Optional[Path] = None


def profile_batches(options: EngineOptions) -> Tuple[int, int, int]:
    """(min, opt, max) batch of the optimisation profile; refuses an inconsistent one before a slow build."""
    high = int(options.max_batch)
    opt = int(options.opt_batch) or high
    low = int(options.min_batch)
    if not 1 <= low <= opt <= high:
        raise ValueError(f"batch profile must satisfy 1 <= min <= opt <= max, got min={low} opt={opt} max={high}")
    return low, opt, high


def load_plugin_library(trt, logger, plugin_library: Optional[Path]) -> None:
    trt.init_libnvinfer_plugins(logger, "")  # TensorRT's own plugins, MultiscaleDeformableAttnPlugin_TRT included
    if plugin_library is None:
        return
    registry = trt.get_plugin_registry()
    if hasattr(registry, "load_library"):
        registry.load_library(str(plugin_library))
    else:  # TensorRT 8.6: loading the library runs its static registration
        import ctypes

        ctypes.CDLL(str(plugin_library), mode=ctypes.RTLD_GLOBAL)


def build_engine_file(
    onnx_path: Path,
    engine_path: Path,
    options: EngineOptions,
    plugin_library: Optional[Path] = None,
    calibration_batches: Optional[Iterable[np.ndarray]] = None,
) -> Path:
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    load_plugin_library(trt, logger, plugin_library)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
    cache_bytes = options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.is_file() else b""
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)

    if options.precision in ("fp16", "int8"):
        if not builder.platform_has_fast_fp16:
            log.warning("this GPU has no fast FP16; the engine may be slower than FP32")
        config.set_flag(trt.BuilderFlag.FP16)
    if options.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        has_qdq = any(network.get_layer(i).type == trt.LayerType.QUANTIZE for i in range(network.num_layers))
        if not has_qdq:
            if calibration_batches is None:
                raise ValueError("INT8 without Q/DQ nodes needs calibration images (calib=...)")
            from converters.tensorrt.calibrator import make_entropy_calibrator

            config.int8_calibrator = make_entropy_calibrator(calibration_batches, options.calibration_cache)

    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        if shape[0] == -1 or options.dynamic_batch:
            rest = [int(d) for d in shape[1:]]
            if any(d < 0 for d in rest):
                raise ValueError(f"input {tensor.name} has dynamic non-batch dims {shape}; export with a fixed imgsz")
            low, opt, high = profile_batches(options)
            profile.set_shape(tensor.name, [low] + rest, [opt] + rest, [high] + rest)
    config.add_optimization_profile(profile)
    if options.precision == "int8" and config.int8_calibrator is not None:
        config.set_calibration_profile(profile)

    log.info("building TensorRT engine (%s) from %s; this takes minutes on a Jetson", options.precision, onnx_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine; run with -v for the builder log")
    engine_path.write_bytes(bytes(serialized))
    if options.timing_cache:
        options.timing_cache.write_bytes(bytes(timing_cache.serialize()))
    return engine_path
