"""The export matrix behind `edgedet benchmark --model CKPT`: every format x precision x MSDA form
this machine can build, each exported once (or skipped with the reason).

Registered for the runtime as the `export_matrix` plug-in; the timing, accuracy and table live in
`runtime.commands.benchmark`, which also benchmarks existing artifacts without torch.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from tqdm import tqdm

log = logging.getLogger(__name__)

QUICK = [("onnx", "fp32", None), ("openvino", "fp32", None)]  # each format's default (best available) form


def _candidates(has_msda: bool, quick: bool) -> List[tuple]:
    from converters.formats import FORMATS

    if quick:
        return list(QUICK)
    rows = []
    for fmt in FORMATS.values():
        forms = [f for f in fmt.msda_forms if f != "trt_builtin" or fmt.name == "tensorrt"] if has_msda else [""]
        for precision in fmt.precisions:
            for form in forms:
                rows.append((fmt.name, precision, form or None))
    return rows


def _skip_reason(fmt: str, precision: str, form: Optional[str], calib: Any) -> str:
    from converters.formats import FORMATS
    from converters.onnx.msda_forms import form_available

    row = FORMATS[fmt]
    if fmt == "tensorrt" and importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'edgedet[tensorrt]' on a machine with an NVIDIA GPU)"
    if fmt == "onnx" and form == "fused":
        return "ONNX Runtime has no kernel for the fused MSDA node (that graph is for OpenVINO and TensorRT)"
    if (precision, form or "") in row.unsupported:
        return row.unsupported[(precision, form or "")].split(";")[0]
    if form and fmt != "tensorrt" and not form_available(form):
        return f"MSDA form '{form}' is not available here (fused: build it with scripts/build_ov_extension.sh)"
    if precision == "int8" and calib is None:
        return "INT8 needs calibration images: pass --data"
    return ""


def export_matrix(checkpoint: Path, out_dir: Path, imgsz: Sequence[int], quick: bool = False, calib: Any = None,
                  calib_images: int = 32) -> List[Dict[str, Any]]:
    """Export `checkpoint` to every buildable combination under `out_dir`.

    -> rows {format, precision, msda, path (None when skipped), skipped (reason or "")}.
    calib: images (folder or list of files) for INT8; INT8 rows are skipped without it.
    """
    from converters.api import deployable, export, resolve_model
    from converters.formats import ExportError
    from converters.onnx.msda_forms import has_msda

    model, experiment = resolve_model(checkpoint)
    model = deployable(model)
    rows: List[Dict[str, Any]] = []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for fmt, precision, form in tqdm(_candidates(has_msda(model), quick), desc="exporting", unit="artifact", disable=None):
        if fmt == "tensorrt" and importlib.util.find_spec("tensorrt") is None:
            if not any(r["format"] == "tensorrt" for r in rows):  # one line for the whole format, not one per combination
                rows.append({"format": fmt, "precision": "all", "msda": "all", "path": None, "skipped": _skip_reason(fmt, precision, form, calib)})
            continue
        row = {"format": fmt, "precision": precision, "msda": form or "", "path": None, "skipped": ""}
        rows.append(row)
        reason = _skip_reason(fmt, precision, form, calib)
        if reason:
            row["skipped"] = reason
            continue
        name = f"{fmt}-{form or 'default'}-{precision}"
        suffix = {"onnx": ".onnx", "openvino": ".xml", "tensorrt": ".engine"}[fmt]
        try:
            path = export(model, format=fmt, precision=precision, imgsz=tuple(imgsz), msda=form, calib=calib,
                          calib_images=calib_images, output=out_dir / f"{name}{suffix}", experiment=experiment)
        except (ExportError, RuntimeError, ImportError) as e:
            row["skipped"] = f"export failed: {str(e).splitlines()[0][:160]}"
            log.warning("%s %s %s: %s", fmt, precision, form, row["skipped"])
            continue
        row["path"] = str(path)
        from runtime.manifest import read_sidecar

        manifest = read_sidecar(path)
        row["msda"] = manifest.msda if manifest else row["msda"]
    return rows


__all__ = ["export_matrix"]
