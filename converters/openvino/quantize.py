"""The DETR-aware NNCF INT8 recipe for OpenVINO graphs.

What runs INT8: every convolution (backbone, encoder input projections, CCFF / FPN blocks) and every
linear layer not named below (encoder and decoder feed-forward layers, value / output projections), so
the convolutional trunk and the encoder FFNs stay INT8 end to end. What stays float, and why:
  - deformable sampling offsets and attention weights (a small error moves where MSDA samples),
    box heads and reference-point / query-position MLPs (errors become pixel offsets), the encoder
    score head (it picks the queries): `KEEP_FLOAT_PATTERNS`, matched against node names;
  - the attention products Q.K^T and softmax(.).V, MatMuls of two activations (`attention_products`,
    ignored by name): quantized (NNCF places a FakeQuantize on the softmax probabilities by default),
    they split OpenVINO's fused multi-head-attention kernel into MatMul + Softmax + MatMul with
    requantization between them (per-node counters: INT8 MatMuls and separate Softmax nodes) and put
    8-bit steps on the probabilities.
NNCF's transformer model type (SmoothQuant and its quantizer placement) stays on, as in the earlier
recipe `LEGACY_RECIPE` (which quantized the attention products): without it, INT8 of a DINO trained on
BCCD reproduced none of FP32's detections (benches/int8.py; NNCF warned of invalid values).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, List, Sequence, Tuple

from converters.calibration import KEEP_FLOAT_PATTERNS
from converters.formats import ExportError

log = logging.getLogger(__name__)

# Ops a weight may pass through on its way to a MatMul (decompressed, transposed or reshaped constants).
_WEIGHT_PATH_OPS = ("Convert", "Transpose", "Reshape", "Multiply", "Subtract", "Unsqueeze", "Squeeze")


@dataclass(frozen=True)
class Int8Recipe:
    """How `quantize_int8` quantizes. The defaults are edgedet's recipe; `LEGACY_RECIPE` is the earlier one."""

    keep_float: Tuple[str, ...] = KEEP_FLOAT_PATTERNS
    float_attention_products: bool = True  # keep activation x activation MatMuls float (see the module doc)
    smooth_quant: bool = True  # NNCF ModelType.TRANSFORMER (SmoothQuant and its quantizer placement)
    preset: str = "mixed"  # "mixed" (asymmetric activations) | "performance" (symmetric)
    fast_bias_correction: bool = True
    extra_keep_float: Tuple[str, ...] = field(default_factory=tuple)


LEGACY_RECIPE = Int8Recipe(float_attention_products=False)
DEFAULT_RECIPE = Int8Recipe()


def _is_weight(output: Any, depth: int = 0) -> bool:
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        return True
    if depth < 4 and kind in _WEIGHT_PATH_OPS and node.get_input_size() > 0:
        return _is_weight(node.input(0).get_source_output(), depth + 1)
    return False


def attention_products(model: Any) -> List[str]:
    """Names of attention's Q.K^T and softmax(.).V: MatMuls whose two inputs are both activations, and the
    ScaledDotProductAttention nodes `ov.convert_model` fuses them into."""
    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() == "ScaledDotProductAttention"
            or (op.get_type_name() == "MatMul" and not any(_is_weight(i.get_source_output()) for i in op.inputs()))]


def quantize_int8(model: Any, batches: Sequence[Any], recipe: Int8Recipe = DEFAULT_RECIPE) -> Any:
    """An OpenVINO model -> its NNCF INT8 model, calibrated on `batches` (the runtime's preprocessed feeds)."""
    try:
        import nncf
    except ImportError as e:
        raise ExportError("OpenVINO INT8 needs NNCF: pip install nncf") from e
    if not batches:
        raise ExportError("OpenVINO INT8 needs at least one calibration image")
    if recipe.preset not in ("mixed", "performance"):
        raise ExportError(f"INT8 preset must be 'mixed' or 'performance', got {recipe.preset!r}")
    from converters.quiet import quiet_nncf

    patterns = tuple(recipe.keep_float) + tuple(recipe.extra_keep_float)
    names = attention_products(model) if recipe.float_attention_products else []
    ignored = nncf.IgnoredScope(names=names, patterns=[f".*{p}.*" for p in patterns], validate=False)
    log.debug("INT8 (NNCF): calibrating on %d images, keeping %s%s in float", len(batches), ", ".join(patterns),
             f" and {len(names)} attention products" if names else "")
    options = {"model_type": nncf.ModelType.TRANSFORMER} if recipe.smooth_quant else {}
    with quiet_nncf():  # NNCF's INFO lines and progress bars only with -v
        return nncf.quantize(
            model,
            nncf.Dataset(list(batches)),
            subset_size=len(batches),
            preset=nncf.QuantizationPreset.PERFORMANCE if recipe.preset == "performance" else nncf.QuantizationPreset.MIXED,
            fast_bias_correction=recipe.fast_bias_correction,
            ignored_scope=ignored,
            **options,
        )


def float_share(request: Any) -> float:
    """Share of the profiled time an INT8 graph spends in float kernels (needs PERF_COUNT on the compiled model)."""
    total = floats = 0.0
    for info in request.get_profiling_info():
        if info.status != info.Status.EXECUTED:
            continue
        t = info.real_time.total_seconds()
        total += t
        floats += t if "f32" in info.exec_type or "bf16" in info.exec_type else 0.0
    return float(floats / total) if total else float("nan")
