"""TensorRT's explicit quantization: an INT8 Q/DQ ONNX that TensorRT builds without a calibrator.

TensorRT 10 deprecates implicit INT8 (calibrators); its recommended input is an ONNX graph with
QuantizeLinear/DequantizeLinear pairs. We make it with our ONNX Runtime QDQ recipe
(`converters.onnxruntime.quantize`: Conv/MatMul/Gemm only, the same DETR layers kept in float,
per-channel weights, MinMax ranges over the calibration images), with two differences TensorRT
needs: activations are symmetric (TensorRT takes zero points of 0 only), and the graph holds
TensorRT's MSDA plugin node, which ONNX Runtime cannot run. So the ranges are measured on the same
model exported in the portable grid_sample form (ONNX Runtime runs it), saved as ONNX Runtime's
JSON calibration cache, and applied to the plugin graph: tensors present in both graphs get their
ranges, a node fed by a tensor named differently (output_proj after the plugin) takes the range
of its same-named twin's input, and any quantizable node left without a range stays float
(listed in the log).
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import List, Sequence

import numpy as np

from converters.calibration import KEEP_FLOAT_PATTERNS
from converters.formats import ExportError

log = logging.getLogger(__name__)

QDQ_EXTRA_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True}


def nodes_without_ranges(model_proto, ranged: set, op_types: Sequence[str]) -> List[str]:
    """Quantizable nodes with an activation input the calibration did not measure."""
    inits = {i.name for i in model_proto.graph.initializer}
    return [n.name for n in model_proto.graph.node
            if n.op_type in op_types and any(i and i not in inits and i not in ranged for i in n.input)]


def alias_ranges_by_node(portable, target, ranges: dict) -> int:
    """Give a target tensor the range of the tensor at the same input slot of the same-named node in the
    portable graph (e.g. output_proj reads the plugin's output here, a Transpose there) -> count added."""
    by_name = {n.name: n for n in portable.graph.node if n.name}
    added = 0
    for node in target.graph.node:
        twin = by_name.get(node.name)
        if twin is None or twin.op_type != node.op_type or len(twin.input) != len(node.input):
            continue
        for mine, theirs in zip(node.input, twin.input):
            if mine and mine not in ranges and theirs in ranges:
                ranges[mine] = ranges[theirs]
                added += 1
    return added


def qdq_onnx_for_tensorrt(
    plugin_onnx: Path,
    portable_onnx: Path,
    output: Path,
    batches: Sequence[np.ndarray],
    input_name: str = "images",
    keep_float: Sequence[str] = KEEP_FLOAT_PATTERNS,
) -> Path:
    """Write an INT8 Q/DQ copy of `plugin_onnx` (ranges measured on `portable_onnx`) to `output`."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from converters.onnxruntime.quantize import (
        QUANTIZED_OP_TYPES,
        ArrayCalibrationReader,
        calibration_stride,
        matmuls_with_folded_constants,
        nodes_kept_float,
        restore_float_inputs,
    )

    if not len(batches):
        raise ExportError("INT8 quantization needs at least one calibration image")
    portable = onnx.load(str(portable_onnx))
    if any(n.domain not in ("", "ai.onnx") for n in portable.graph.node):
        raise ExportError("the ranges for TensorRT's Q/DQ graph are measured on a portable export (grid_sample or "
                          "gather MSDA form); this one holds custom nodes")
    common = dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                  per_channel=True, op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                  calibrate_method=CalibrationMethod.MinMax)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "ranges.json"
        excluded = nodes_kept_float(portable, keep_float)
        excluded += [n for n in matmuls_with_folded_constants(portable) if n not in excluded]
        # Calibrate on the portable graph; ONNX Runtime saves the ranges in `cache`.
        quantize_static(str(portable_onnx), str(Path(tmp) / "portable_int8.onnx"),
                        ArrayCalibrationReader(batches, input_name), nodes_to_exclude=excluded,
                        extra_options={**QDQ_EXTRA_OPTIONS, "CalibStridedMinMax": calibration_stride(len(batches))},
                        calibration_cache_path=str(cache), **common)
        saved = json.loads(cache.read_text()) if cache.is_file() else {}
        ranges = saved.get("data", saved)  # ORT's TensorsData JSON: {"CLS": ..., "data": {tensor: range}}
        if not ranges:
            raise ExportError("ONNX Runtime wrote no calibration ranges; cannot make the Q/DQ graph for TensorRT")
        target = onnx.load(str(plugin_onnx))
        aliased = alias_ranges_by_node(portable, target, ranges)
        if aliased:
            cache.write_text(json.dumps(saved))
        ranged = set(ranges)
        kept = nodes_kept_float(target, keep_float)
        kept += [n for n in matmuls_with_folded_constants(target) if n not in kept]
        unranged = [n for n in nodes_without_ranges(target, ranged, QUANTIZED_OP_TYPES) if n not in kept]
        if unranged:
            log.info("TensorRT Q/DQ: %d node(s) keep float (their inputs are named differently in the portable "
                     "graph): %s", len(unranged), ", ".join(unranged[:8]) + (" ..." if len(unranged) > 8 else ""))
        staged = Path(tmp) / "plugin_int8.onnx"
        quantize_static(str(plugin_onnx), str(staged), None, nodes_to_exclude=kept + unranged,
                        extra_options=dict(QDQ_EXTRA_OPTIONS), calibration_cache_path=str(cache), **common)
        quant = onnx.load(str(staged))
    restore_float_inputs(quant, kept + unranged)
    del quant.metadata_props[:]
    quant.metadata_props.extend(target.metadata_props)
    from runtime.atomic import atomic_path

    with atomic_path(output) as staged_out:  # often `output` is the plugin graph itself: never half-rewritten
        onnx.save(quant, str(staged_out))
    count = sum(n.op_type == "QuantizeLinear" for n in quant.graph.node)
    log.info("TensorRT Q/DQ graph %s: %d QuantizeLinear nodes, %d quantizable nodes kept float", output, count,
             len(kept) + len(unranged))
    return output
