"""The one table of export formats; it drives argument validation and dispatch.

Each row says what a format produces (suffix), which precisions and MSDA export forms it
accepts, whether INT8 needs calibration images, whether it can be built on a CPU-only
machine, and which function builds it. `validate_request` turns a user's request into a
clear one-line error naming the bad argument and the valid choices.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

PRECISIONS = ("fp32", "fp16", "int8")
MSDA_FORMS = ("fused", "gather", "grid_sample", "trt_builtin")
# The forms every ONNX graph can take; "trt_builtin" (TensorRT's own MultiscaleDeformableAttnPlugin_TRT)
# exists for TensorRT engines only.
PORTABLE_MSDA_FORMS = ("fused", "gather", "grid_sample")


class ExportError(ValueError):
    """A request the exporter cannot satisfy; the message says what to do instead."""


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str
    backend: str  # runtime backend that loads the artifact
    precisions: Tuple[str, ...]
    msda_forms: Tuple[str, ...]
    default_msda: str
    int8_needs_calibration: bool
    cpu_ok: bool
    builder: str  # "module:function" that writes the artifact
    # (precision, msda form) -> why that combination is refused
    unsupported: Dict[Tuple[str, str], str] = field(default_factory=dict)
    # precision -> why it is refused (for precisions not in `precisions`)
    precision_notes: Dict[str, str] = field(default_factory=dict)


FORMATS: Dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            name="onnx",
            suffix=".onnx",
            backend="onnxruntime",
            precisions=("fp32", "int8"),
            # not "fused": ONNX Runtime has no kernel for that node, so nothing here could run the file
            msda_forms=("gather", "grid_sample"),
            default_msda="grid_sample",
            int8_needs_calibration=True,
            cpu_ok=True,
            builder="converters.api:build_onnx",
            precision_notes={
                "fp16": "ONNX Runtime's CPU provider lacks fp16 kernels for most ops; use format='openvino' "
                "(precision='fp16' compresses weights) or format='tensorrt' for fp16",
            },
        ),
        ExportFormat(
            name="openvino",
            suffix=".xml",
            backend="openvino",
            precisions=PRECISIONS,
            msda_forms=PORTABLE_MSDA_FORMS,
            default_msda="fused",
            int8_needs_calibration=True,
            cpu_ok=True,
            builder="converters.api:build_openvino",
        ),
        ExportFormat(
            name="tensorrt",
            suffix=".engine",
            backend="tensorrt",
            precisions=PRECISIONS,
            msda_forms=MSDA_FORMS,
            default_msda="fused",
            int8_needs_calibration=True,
            cpu_ok=False,
            builder="converters.tensorrt.engine:build_engine",
        ),
    )
}


def list_formats() -> List[Dict[str, Any]]:
    """The format table as plain rows (for `edgedet export --list-formats` and docs)."""
    return [
        {
            "format": f.name,
            "suffix": f.suffix,
            "backend": f.backend,
            "precisions": list(f.precisions),
            "msda": list(f.msda_forms),
            "default_msda": f.default_msda,
            "int8_calibration": f.int8_needs_calibration,
            "cpu": f.cpu_ok,
        }
        for f in FORMATS.values()
    ]


def _choice_error(kind: str, value: Any, valid: Tuple[str, ...] | List[str]) -> ExportError:
    close = difflib.get_close_matches(str(value), list(valid), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ExportError(f"unknown {kind} '{value}'.{hint} Valid: {', '.join(valid)}")


def get_format(name: str) -> ExportFormat:
    """Row for `name`; a misspelt name gets a suggestion and the list of valid names."""
    key = str(name).lower().strip()
    if key not in FORMATS:
        raise _choice_error("export format", name, list(FORMATS))
    return FORMATS[key]


def validate_request(
    format: str, precision: str, msda: Optional[str], has_msda: bool, has_calibration: bool
) -> Tuple[ExportFormat, str]:
    """Check one export request against the table -> (format row, resolved msda form).

    `msda=None` picks the format's default; models without deformable attention resolve to "".
    """
    fmt = get_format(format)
    if precision not in PRECISIONS:
        raise _choice_error("precision", precision, PRECISIONS)
    if precision not in fmt.precisions:
        note = fmt.precision_notes.get(precision, f"format '{fmt.name}' accepts {', '.join(fmt.precisions)}")
        raise ExportError(f"precision '{precision}' is not supported for format '{fmt.name}': {note}")
    if msda is not None and msda not in MSDA_FORMS:
        raise _choice_error("msda form", msda, MSDA_FORMS)
    form = (msda or fmt.default_msda) if has_msda else ""
    if form and form not in fmt.msda_forms:
        why = (": ONNX Runtime has no kernel for the fused node; for fused MSDA export format='openvino' (C++ extension) "
               "or format='tensorrt' (CUDA plugin)") if (fmt.name, form) == ("onnx", "fused") else ""
        raise ExportError(f"msda form '{form}' is not supported for format '{fmt.name}'{why}; "
                          f"use one of {', '.join(fmt.msda_forms)}")
    reason = fmt.unsupported.get((precision, form))
    if reason:
        raise ExportError(f"format '{fmt.name}' with precision '{precision}' and msda '{form}' is not supported: {reason}")
    if precision == "int8" and fmt.int8_needs_calibration and not has_calibration:
        raise ExportError(
            f"precision 'int8' for format '{fmt.name}' needs calibration images: pass calib=<folder of images, "
            "dataset or DataConfig> (CLI: --calib PATH)"
        )
    return fmt, form
