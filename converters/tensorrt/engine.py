"""`export(..., format="tensorrt")`: ONNX with the MSDA plugin node -> TensorRT engine + manifest.

The engine must be built on the device that runs it (a Jetson builds its own). Without
TensorRT, `dry_run=True` writes the exact ONNX the engine would be built from, next to the
requested engine path, so it can be copied to the device and built there with trtexec or
`edgedet export --format tensorrt`.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import onnx
from torch import nn

from converters.tensorrt.builder import EngineOptions, build_engine_file, import_tensorrt, resolve_int8_mode, tensorrt_major
from converters.formats import ExportError
from converters.tensorrt.onnx_plugins import BuiltinPluginUnsupported, rewrite_for_tensorrt
from converters.tensorrt.plugin import LIBRARY_NAME, library_path
from runtime.atomic import atomic_copy, atomic_path
from runtime.manifest import Manifest, read_sidecar, write_sidecar

log = logging.getLogger(__name__)


# msda form -> which plugin runs the fused node in TensorRT
PLUGIN_TARGETS = {"fused": "edgedet", "trt_builtin": "trt_builtin"}


def rewrite_onnx_file(onnx_path: Path, msda: str) -> Path:
    """Rewrite the fused MSDA nodes of an ONNX file in place for the plugin of form `msda` (no-op for other forms)."""
    if msda in PLUGIN_TARGETS:
        proto = onnx.load(str(onnx_path))
        try:
            rewritten = rewrite_for_tensorrt(proto, PLUGIN_TARGETS[msda])
        except BuiltinPluginUnsupported as e:
            raise ExportError(str(e)) from e
        with atomic_path(onnx_path) as tmp:  # rewritten in place: never left half-written
            onnx.save(rewritten, str(tmp))
        refresh_sidecar(onnx_path)
    return onnx_path


def refresh_sidecar(onnx_path: Path) -> None:
    """After an in-place rewrite: the sidecar, written last again, describes the file as it is now."""
    manifest = read_sidecar(onnx_path)
    if manifest is not None:
        write_sidecar(manifest, onnx_path)


def tensorrt_onnx(model: nn.Module, req, onnx_path: Path) -> Path:
    """Write the ONNX TensorRT will parse: the request's MSDA form, fused nodes rewritten for their plugin."""
    from converters.onnx.export import export_onnx

    onnx_manifest = dataclasses.replace(req.manifest, backend="onnxruntime", custom_ops={})
    form = "fused" if req.msda in PLUGIN_TARGETS else req.msda
    export_onnx(model, onnx_path, req.imgsz, onnx_manifest, form, req.dynamic_batch, req.postprocess,
                req.top_k, req.opset, req.simplify)
    return rewrite_onnx_file(onnx_path, req.msda)


def qdq_from_model(model: nn.Module, req, onnx_path: Path) -> Path:
    """Rewrite `onnx_path` (the plugin graph) as TensorRT's explicit INT8 Q/DQ graph, ranges measured on a
    portable (grid_sample) export of the same model (see converters.tensorrt.qdq)."""
    import tempfile

    from converters.calibration import calibration_batches
    from converters.onnx.export import export_onnx
    from converters.tensorrt.qdq import qdq_onnx_for_tensorrt

    batches = calibration_batches(req.calib, req.manifest, req.calib_images)
    with tempfile.TemporaryDirectory() as tmp:
        portable = Path(tmp) / "portable.onnx"
        manifest = dataclasses.replace(req.manifest, backend="onnxruntime", custom_ops={})
        export_onnx(model, portable, req.imgsz, manifest, "grid_sample", req.dynamic_batch, req.postprocess,
                    req.top_k, req.opset, req.simplify)
        qdq_onnx_for_tensorrt(onnx_path, portable, onnx_path, batches, req.manifest.input_name)
    refresh_sidecar(onnx_path)
    return onnx_path


def engine_from_onnx(onnx_path: Path, engine_path: Path, manifest: Manifest, msda: str, precision: str = "fp32",
                     dynamic_batch: bool = False, calib=None, calib_images: int = 32, workspace_gb: float = 2.0,
                     max_batch: int = 8, min_batch: int = 1, opt_batch: int = 0) -> Path:
    """Build `engine_path` from a rewritten ONNX file; copy our plugin beside it and write the sidecar manifest.

    INT8 from a Q/DQ ONNX needs no `calib`; otherwise `calib` feeds the implicit calibrator."""
    plugin = None
    if msda == "fused":
        plugin = library_path()
        atomic_copy(plugin, engine_path.parent / LIBRARY_NAME)  # never rewritten in place while mapped
        manifest = dataclasses.replace(manifest, custom_ops={**manifest.custom_ops, "tensorrt": LIBRARY_NAME})
    batches = None
    if precision == "int8" and not _has_qdq(onnx_path):
        from converters.calibration import calibration_batches

        batches = calibration_batches(calib, manifest, calib_images)
    options = EngineOptions(
        precision=precision,
        dynamic_batch=dynamic_batch,
        max_batch=max_batch,
        min_batch=min_batch,
        opt_batch=opt_batch,
        workspace_gb=workspace_gb,
        timing_cache=engine_path.with_suffix(".timing.cache"),
        calibration_cache=engine_path.with_suffix(".calib.cache"),
    )
    build_engine_file(onnx_path, engine_path, options, plugin, batches)
    write_sidecar(dataclasses.replace(manifest, backend="tensorrt"), engine_path)
    return engine_path


def _has_qdq(onnx_path: Path) -> bool:
    return any(n.op_type == "QuantizeLinear" for n in onnx.load(str(onnx_path), load_external_data=False).graph.node)


def build_engine(model: nn.Module, req, workspace_gb: float = 2.0, int8_mode: str = "auto") -> Path:
    """Builder named in the format table. Returns the engine path (the ONNX path when `req.dry_run`).

    INT8: `int8_mode` "qdq" writes TensorRT's explicit Q/DQ ONNX (calibrated here with ONNX Runtime,
    so a dry run on a CPU machine gives the device an ONNX it builds as INT8 without calibrating);
    "calibrator" uses TensorRT's entropy calibrator; "auto" = qdq on TensorRT >= 10 or without
    TensorRT, calibrator on 8.x (JetPack 5). A dynamic batch uses `req.batch_profile` (min, opt, max)."""
    dry_run = getattr(req, "dry_run", False)
    engine_path = Path(req.output)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    onnx_path = engine_path.with_suffix(".onnx")
    low, opt, high = getattr(req, "batch_profile", (1, 8, 8))
    major = None
    if not dry_run:
        major = tensorrt_major(import_tensorrt())  # fail before the (slow) ONNX export when TensorRT is absent
    tensorrt_onnx(model, req, onnx_path)
    if req.precision == "int8" and resolve_int8_mode(int8_mode, major) == "qdq":
        qdq_from_model(model, req, onnx_path)
    if dry_run:
        plugin = f" --dynamicPlugins={LIBRARY_NAME}" if req.msda == "fused" else ""  # TensorRT 8.x: --plugins=
        flags = {"fp16": " --fp16", "int8": " --int8 --fp16"}.get(req.precision, "")
        log.info("dry run: wrote %s; build the engine on the device with `trtexec --onnx=%s%s%s`", onnx_path,
                 onnx_path.name, plugin, flags)
        return onnx_path
    return engine_from_onnx(onnx_path, engine_path, req.manifest, req.msda, req.precision, req.dynamic_batch,
                            req.calib, req.calib_images, workspace_gb, max_batch=high, min_batch=low, opt_batch=opt)
