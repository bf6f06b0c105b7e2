"""Build a TensorRT engine from an ONNX file with the TensorRT Python API.

Optimisation profile for dynamic batch, workspace limit, timing cache, FP16, INT8: explicit
(a Q/DQ ONNX from `converters.tensorrt.qdq`, TensorRT 10's path, no calibrator) or implicit
(entropy calibration over one or several inputs, the path of TensorRT 8.x on JetPack 5). The
MSDA plugin library is loaded once per process. Engines, timing caches and calibration caches
are written atomically (temp file + rename). Works with TensorRT 8.6 (JetPack 5) and 10.x.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Tuple

import numpy as np

from converters.formats import ExportError
from converters.tensorrt.files import atomic_write_bytes

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
    int8_mode: str = "auto"  # auto (qdq on TensorRT >= 10, calibrator before) | qdq | calibrator


INT8_MODES = ("auto", "qdq", "calibrator")


def tensorrt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def resolve_int8_mode(requested: str, major: Optional[int]) -> str:
    """"qdq" (explicit quantization) or "calibrator" (implicit); `major` None = TensorRT absent (dry run)."""
    if requested not in INT8_MODES:
        raise ValueError(f"int8_mode must be one of {', '.join(INT8_MODES)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "calibrator" if major is not None and major < 10 else "qdq"


def profile_batches(options: EngineOptions) -> Tuple[int, int, int]:
    """(min, opt, max) batch of the optimisation profile; refuses an inconsistent one before a slow build."""
    high = int(options.max_batch)
    opt = int(options.opt_batch) or high
    low = int(options.min_batch)
    if not 1 <= low <= opt <= high:
        raise ValueError(f"batch profile must satisfy 1 <= min <= opt <= max, got min={low} opt={opt} max={high}")
    return low, opt, high


def load_plugin_library(trt, logger, plugin_library: Optional[Path]) -> None:
    """TensorRT's own plugins (MultiscaleDeformableAttnPlugin_TRT included) and ours, each once per process."""
    from runtime.backends.trt_plugins import init_builtin_plugins
    from runtime.backends.trt_plugins import load_plugin_library as load_once

    init_builtin_plugins(trt, logger)
    if plugin_library is not None:
        load_once(trt, Path(plugin_library))


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
    if tensorrt_major(trt) < 10:
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
    calibrator = None
    if options.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        has_qdq = any(network.get_layer(i).type == trt.LayerType.QUANTIZE for i in range(network.num_layers))
        if not has_qdq:
            if calibration_batches is None:
                raise ValueError("INT8 without Q/DQ nodes needs calibration images (calib=...)")
            if tensorrt_major(trt) >= 10:
                log.warning("implicit INT8 (calibrator) is deprecated in TensorRT 10; int8_mode='qdq' builds from "
                            "a Q/DQ ONNX instead")
            from converters.tensorrt.calibrator import make_entropy_calibrator

            names = [network.get_input(i).name for i in range(network.num_inputs)]
            calibrator = make_entropy_calibrator(calibration_batches, names, options.calibration_cache)
            config.int8_calibrator = calibrator
        else:
            log.info("INT8 from the network's Q/DQ nodes (explicit quantization); no calibrator")

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
    if calibrator is not None:
        config.set_calibration_profile(profile)

    log.info("building TensorRT engine (%s) from %s; this takes minutes on a Jetson", options.precision, onnx_path)
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.close()  # frees its device buffers
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine; run with -v for the builder log")
    atomic_write_bytes(engine_path, bytes(serialized))
    if options.timing_cache:
        atomic_write_bytes(options.timing_cache, bytes(timing_cache.serialize()))
    return engine_path
