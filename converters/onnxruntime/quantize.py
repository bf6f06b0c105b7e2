"""INT8 static quantization of an exported ONNX model for ONNX Runtime (QDQ format).

Only the compute-heavy ops (Conv, MatMul, Gemm) are quantized; nodes whose names match
`KEEP_FLOAT_PATTERNS` (MSDA sampling offsets / attention weights, box heads, reference
points) stay float, as does everything else (MSDA sampling itself, softmax, top-K).
Calibration feeds the same preprocessed images the runtime would produce.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import numpy as np

from converters.calibration import KEEP_FLOAT_PATTERNS
from converters.formats import ExportError
from runtime.atomic import atomic_path

log = logging.getLogger(__name__)

QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")
CALIB_CHUNK_IMAGES = 8  # images whose activations MinMax calibration holds in memory at once


class ArrayCalibrationReader:
    """onnxruntime CalibrationDataReader over preprocessed arrays [1, 3, H, W] or feed dicts (input name -> array).

    `__len__` and `set_range` let quantize_static calibrate in strides (`CalibStridedMinMax`).
    """

    def __init__(self, batches: Sequence[np.ndarray], input_name: str = "images"):
        self.input_name = input_name
        self.batches = list(batches)
        self._it: Optional[Iterator[np.ndarray]] = None
        self.rewind()

    def __len__(self) -> int:
        return len(self.batches)

    def get_next(self):
        batch = next(self._it, None)
        if batch is None or isinstance(batch, dict):  # a feed dict (image + valid region) as it is
            return batch
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._it = iter(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.batches[start_index:end_index])


def calibration_stride(num_images: int, most: int = CALIB_CHUNK_IMAGES) -> int:
    """The largest stride <= `most` dividing `num_images` (ORT's strided MinMax needs a divisor)."""
    return max(d for d in range(1, min(most, num_images) + 1) if num_images % d == 0)


def nodes_kept_float(model_proto, patterns: Sequence[str] = KEEP_FLOAT_PATTERNS) -> List[str]:
    """Names of quantizable nodes that must stay float (matched by name fragment)."""
    return [
        n.name for n in model_proto.graph.node
        if n.op_type in QUANTIZED_OP_TYPES and any(p in n.name for p in patterns)
    ]


def matmuls_with_folded_constants(model_proto) -> List[str]:
    """MatMul nodes whose constant input has rank > 2: a folded activation, not a weight.

    (DINO's first decoder layer attends over values computed from the learned content queries,
    which ONNX constant folding turns into a [1, heads, Q, d] initializer.) ORT's QLinearMatMul
    takes per-channel zero points on 2-D weights only, so these nodes stay float.
    """
    ranks = {init.name: len(init.dims) for init in model_proto.graph.initializer}
    return [n.name for n in model_proto.graph.node
            if n.op_type == "MatMul" and any(ranks.get(i, 0) > 2 for i in n.input)]


def restore_float_inputs(model_proto, node_names: Sequence[str]) -> int:
    """Feed the named nodes the float tensor behind any Q -> DQ pair on their inputs -> inputs rewired.

    The QDQ quantizer puts one Q/DQ pair on a tensor shared by a quantized and an excluded
    consumer, so the excluded node would still see int8-rounded activations.
    """
    producer = {o: n for n in model_proto.graph.node for o in n.output}
    wanted, rewired = set(node_names), 0
    for node in model_proto.graph.node:
        if node.name not in wanted:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
                rewired += 1
    return rewired


def quantize_onnx_int8(
    float_onnx: Path,
    output: Path,
    batches: Sequence[np.ndarray],
    input_name: str = "images",
    keep_float: Sequence[str] = KEEP_FLOAT_PATTERNS,
) -> Path:
    """Write an INT8 QDQ copy of `float_onnx` to `output`, calibrated on `batches` -> output.

    The metadata (manifest) of the float model is carried over.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not batches:
        raise ExportError("INT8 quantization needs at least one calibration image")
    float_onnx, output = Path(float_onnx), Path(output)
    proto = onnx.load(str(float_onnx))
    if any(n.domain not in ("", "ai.onnx") for n in proto.graph.node):
        raise ExportError("ONNX Runtime INT8 needs a graph without custom nodes; export with msda='gather' or 'grid_sample'")
    excluded = nodes_kept_float(proto, keep_float)
    folded = matmuls_with_folded_constants(proto)
    log.info("INT8 (ORT QDQ): %d nodes kept in float (%s) and %d MatMuls over folded constants",
             len(excluded), ", ".join(keep_float), len(folded))
    excluded += [name for name in folded if name not in excluded]
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "int8.onnx"
        quantize_static(
            str(float_onnx),
            str(staged),
            ArrayCalibrationReader(batches, input_name),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
            # MinMax keeps every image's activations until the end; strides fold each chunk into
            # the running min/max (same ranges, bounded memory). Not CalibMaxIntermediateOutputs:
            # ORT 1.31 discards each full chunk without folding it ("No data is collected").
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                           "CalibStridedMinMax": calibration_stride(len(batches))},
        )
        quant = onnx.load(str(staged))
    log.debug("INT8 (ORT QDQ): %d excluded-node inputs restored to float", restore_float_inputs(quant, excluded))
    del quant.metadata_props[:]
    quant.metadata_props.extend(proto.metadata_props)
    with atomic_path(output) as tmp:  # an interrupted save never leaves a truncated artifact
        onnx.save(quant, str(tmp))
    return output
