"""ONNX -> OpenVINO IR (.xml + .bin) in fp32, fp16-compressed or NNCF INT8.

With msda="fused" the ONNX holds `edgedet::MultiScaleDeformableAttention`; the compiled
extension (`converters.openvino.extension`) supplies the op to `ov.convert_model` and is
copied next to the .xml so the runtime can load it (`manifest.custom_ops["openvino"]`).
INT8 uses `nncf.quantize` with the same preprocessed calibration images as the runtime and
the DETR-aware recipe of `converters.openvino.quantize` (convolutions and FFNs INT8; MSDA sampling
offsets / attention weights, box heads and attention products float).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from converters.formats import ExportError
from converters.openvino.quantize import DEFAULT_RECIPE, Int8Recipe, quantize_int8
from runtime.atomic import atomic_copy, atomic_paths
from runtime.manifest import Manifest, write_sidecar

log = logging.getLogger(__name__)

EXTENSION_LIBRARY = "libedgedet_ov_msda.so"


def fused_extension_path() -> Path:
    """Path of the built OpenVINO MSDA extension; a clear ExportError when it is not built."""
    try:
        from converters.openvino.extension import library_path
    except ImportError as e:
        raise ExportError(f"the OpenVINO MSDA extension module is unavailable ({e}); export with msda='gather'") from e
    try:
        path = Path(library_path(build_if_missing=False))
    except Exception as e:  # the extension module raises its own 'not built' error type
        raise ExportError(f"msda='fused' needs the OpenVINO MSDA extension: {e}") from e
    if not path.is_file():
        raise ExportError(f"OpenVINO MSDA extension {path} does not exist; build it or export with msda='gather'")
    return path


def fused_extension_available() -> bool:
    try:
        fused_extension_path()
    except ExportError:
        return False
    return True


def convert_openvino(
    onnx_path: Path,
    output_xml: Path,
    precision: str,
    manifest: Manifest,
    batches: Optional[Sequence[np.ndarray]] = None,
    recipe: Int8Recipe = DEFAULT_RECIPE,
) -> Path:
    """Convert `onnx_path` to `output_xml` (+ .bin, sidecar, extension copy) -> output_xml.

    precision: fp32 (weights stay fp32), fp16 (weights compressed to fp16), int8 (NNCF,
    needs `batches` of float32 [1, 3, H, W]; `recipe` says what stays float: `converters.openvino.quantize`).
    """
    import openvino as ov

    output_xml = Path(output_xml)
    if output_xml.suffix != ".xml":
        raise ExportError(f"OpenVINO output must end in .xml, got {output_xml.name}")
    output_xml.parent.mkdir(parents=True, exist_ok=True)
    extension = None
    if manifest.msda == "fused":
        extension = fused_extension_path()
    try:
        model = ov.convert_model(str(onnx_path), extension=[str(extension)] if extension else None)
    except Exception as e:  # OpenVINO raises its own exception types for unsupported ops
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"OpenVINO could not convert {Path(onnx_path).name}: {first}") from e
    if precision == "int8":
        model = quantize_int8(model, batches or [], recipe)
    if extension is not None:
        # never rewritten in place: a running process that has it mapped would crash (SIGBUS)
        atomic_copy(extension, output_xml.parent / EXTENSION_LIBRARY)
        manifest.custom_ops["openvino"] = EXTENSION_LIBRARY
    model.set_rt_info(manifest.to_json(), ["edgedet", "manifest"])
    # Weights, then the graph, then the sidecar that marks the export finished, each renamed into place
    # complete. save_model compresses to fp16 by default; only the fp16 precision asks for it.
    with atomic_paths([output_xml.with_suffix(".bin"), output_xml], suffixes=[".bin", ".xml"]) as (tmp_bin, tmp_xml):
        try:
            ov.save_model(model, str(tmp_xml), compress_to_fp16=precision == "fp16")
            os.replace(tmp_xml.with_suffix(".bin"), tmp_bin)  # save_model names the weights after the graph
        finally:
            tmp_xml.with_suffix(".bin").unlink(missing_ok=True)
    write_sidecar(manifest, output_xml)
    log.debug("wrote %s (OpenVINO %s, msda=%s)", output_xml, precision, manifest.msda or "-")
    return output_xml
