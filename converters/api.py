"""`export(model, format=...)`: the one verb that turns a detector into a deployable artifact.

Validation follows the format table (`converters.formats`), the model comes from a module,
a checkpoint (ours or official) or a registry name, and each format's builder writes the
artifact plus its manifest (inside the artifact and as `<artifact name>.edgedet.json`).
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from torch import nn

from converters.calibration import calibration_batches
from converters.formats import ExportError, ExportFormat, validate_request
from converters.onnx.msda_forms import form_available, has_msda
from runtime.manifest import Manifest, OutputSpec, PreprocessSpec

log = logging.getLogger(__name__)

ModelSource = Union[nn.Module, str, Path]


@dataclass
class ExportRequest:
    """Everything a format builder needs besides the model (already validated)."""

    format: ExportFormat
    output: Path
    precision: str
    msda: str
    imgsz: Tuple[int, int]
    dynamic_batch: bool
    postprocess: bool
    top_k: int
    calib: Any
    calib_images: int
    opset: int
    manifest: Manifest
    simplify: bool = True
    dry_run: bool = False  # tensorrt: write only the ONNX the engine would be built from
    batch_profile: Tuple[int, int, int] = (1, 8, 8)  # tensorrt + dynamic_batch: min/opt/max of the optimisation profile


def resolve_model(source: ModelSource, config: Optional[str] = None,
                  updates: Sequence[str] = ()) -> Tuple[nn.Module, Dict[str, Any]]:
    """nn.Module | checkpoint path | registered model name -> (model in eval mode, experiment config dict or {}).

    config, updates: --config NAME / --update KEY=VALUE for official weights whose files carry no config
    (RT-DETRv2, D-FINE, DEIM), as `edgedet.checkpoints.load_official` takes them."""
    if (config or updates) and not (isinstance(source, (str, Path)) and Path(source).is_file()):
        raise ExportError("--config / --update describe an official checkpoint file (RT-DETRv2, D-FINE, DEIM): pass it "
                          "with --model PATH")
    if isinstance(source, nn.Module):
        return source.eval(), {}
    path = Path(source)
    if path.is_file():
        from edgedet.engine.checkpoint import CheckpointError, IncompleteCheckpointError, load_checkpoint, load_model

        try:
            ckpt = load_checkpoint(path)
        except IncompleteCheckpointError:  # ours, but lacking its config: say so, not "use it as it is"
            raise
        except CheckpointError:  # not written by `edgedet train`: an official checkpoint
            from edgedet.checkpoints import load_official
            from edgedet.checkpoints.released_configs import MissingConfigError

            try:
                return load_official(str(path), config=config, updates=list(updates)).eval(), {}
            except MissingConfigError as e:  # the command to run is export's
                raise ExportError(e.message(f"edgedet export --model {path} {{config}} --format FORMAT")) from None
        if config or updates:
            raise ExportError(f"{path} is an `edgedet train` checkpoint, which carries its config: drop --config/--update")
        return load_model(str(path)).eval(), dict(ckpt.get("config") or {})
    from edgedet import list_models

    if str(source) in list_models():
        from edgedet import create_model

        log.warning("'%s' is a model name, not a checkpoint: exporting a randomly initialised model", source)
        return create_model(str(source)).eval(), {}
    if path.suffix.lower() in (".pth", ".pt", ".ckpt") or len(path.parts) > 1:
        raise ExportError(f"checkpoint not found: {source} is neither a checkpoint file nor a model name; models: "
                          f"{', '.join(list_models())} (train one with `edgedet train`)")
    raise ExportError(f"'{source}' is neither a checkpoint file nor a model name; models: {', '.join(list_models())}")


def deployable(model: nn.Module) -> nn.Module:
    """The network that runs at inference: training-only parts (Co-DETR's auxiliary heads) dropped."""
    to_base = getattr(model, "to_base_model", None)
    if callable(to_base):
        return to_base().eval()
    if callable(getattr(model, "deploy", None)):  # RT-DETR: RepVGG branches fused, on a copy (the caller's model stays)
        return copy.deepcopy(model).deploy()
    return model


def make_manifest(
    model: nn.Module, backend: str, precision: str, msda: str, imgsz: Tuple[int, int], batch: int,
    postprocess: bool, top_k: int, class_names: Optional[Sequence[str]], experiment: Dict[str, Any],
    input_format: str = "float32_nchw", resize: str = "letterbox",
) -> Manifest:
    from edgedet import __version__
    from edgedet.config import to_dict

    config = getattr(model, "config", None)
    names = list(class_names if class_names is not None else (getattr(config, "class_names", None) or []))
    data = experiment.get("data") or {}
    pre = PreprocessSpec(size=(int(imgsz[0]), int(imgsz[1])), input_format=input_format, resize=resize)
    if data.get("mean") and data.get("std"):
        pre = dataclasses.replace(pre, mean=tuple(data["mean"]), std=tuple(data["std"]))
    elif getattr(model, "input_mean", None) is not None:  # the family's own preprocessing (RT-DETR: /255 only)
        pre = dataclasses.replace(pre, mean=tuple(model.input_mean), std=tuple(model.input_std))
    activation = getattr(model, "score_activation", "softmax")
    names_out = ["labels", "boxes", "scores"] if postprocess else ["pred_logits", "pred_boxes"]
    from converters.onnx.export import VALID_INPUT_NAME
    from edgedet.nn.padding_mask import uses_padding_mask

    return Manifest(
        family=getattr(config, "name", "") or type(model).__name__,
        class_names=names,
        valid_input=VALID_INPUT_NAME if uses_padding_mask(model) else "",
        batch=batch,
        preprocess=pre,
        outputs=OutputSpec(postprocess=postprocess, names=names_out, score_activation=activation, top_k=top_k),
        backend=backend,
        precision=precision,
        msda=msda,
        edgedet_version=__version__,
        model_config=to_dict(config) if dataclasses.is_dataclass(config) else {},
    )


def _output_path(output: Optional[Union[str, Path]], fmt: ExportFormat, family: str, msda: str, precision: str,
                 source: Any = None) -> Path:
    default_name = f"{family or 'model'}{'-' + msda if msda else ''}-{precision}{fmt.suffix}"
    if output is None:
        from converters.export_defaults import default_output_dir

        return default_output_dir(source) / default_name
    path = Path(output)
    if path.is_dir() or str(output).endswith(("/", "\\")):
        return path / default_name
    if path.suffix != fmt.suffix:
        raise ExportError(f"format '{fmt.name}' writes '{fmt.suffix}' files; got output {path.name}")
    return path


def companion_files(fmt: ExportFormat, output: Path, dry_run: bool) -> list:
    """Every file of the user's that this export would write: the artifact and its data / build files."""
    if fmt.name == "tensorrt":
        return [output.with_suffix(".onnx")] + ([] if dry_run else [output])
    if fmt.suffix == ".xml":
        return [output, output.with_suffix(".bin")]
    return [output]


def check_outputs(fmt: ExportFormat, output: Path, dry_run: bool, overwrite: bool, inputs: Sequence[Any] = ()) -> None:
    """Before any slow work: never write over an input, an existing file (unless `overwrite`), or into
    a folder that cannot be written."""
    from runtime.safety import check_writable_folder, refuse_output_over_input, refuse_overwrite

    files = companion_files(fmt, output, dry_run)
    refuse_output_over_input(files, [i for i in inputs if isinstance(i, (str, Path))], what="export output")
    for f in files:
        refuse_overwrite(f, overwrite, flag="--exist-ok (overwrite=True)")
    check_writable_folder(output.parent, what="export folder")


def check_engine_builder(fmt: ExportFormat, dry_run: bool) -> None:
    """A TensorRT engine build on a machine without TensorRT fails here, before the model loads (not after the
    threshold search and the ONNX export); a dry run needs no TensorRT."""
    if fmt.name == "tensorrt" and not dry_run:
        from converters.tensorrt.builder import import_tensorrt

        import_tensorrt()


def _resolve_default_msda(fmt: ExportFormat, msda: Optional[str], form: str) -> str:
    """An unrequested 'fused' default falls back to an exportable form when the extension is unbuilt."""
    if msda is not None or form != "fused" or fmt.name != "openvino":
        return form
    from converters.openvino.convert import fused_extension_available

    if fused_extension_available():
        return form
    fallback = "gather" if form_available("gather") else "grid_sample"
    log.info("OpenVINO MSDA extension is not built; exporting msda='%s' instead of 'fused'", fallback)
    return fallback


def check_imgsz(model: nn.Module, imgsz_hw: Tuple[int, int]) -> None:
    """An input size the model cannot take (RT-DETR / D-FINE: sides not divisible by 32) fails here, naming
    the nearest valid sizes, instead of as a shape error deep inside the ONNX export."""
    from edgedet.data.padding import check_input_size

    try:
        check_input_size(model, imgsz_hw)
    except ValueError as e:
        raise ExportError(str(e)) from None


def build_onnx(model: nn.Module, req: ExportRequest) -> Path:
    from converters.onnx.export import export_onnx

    if req.precision == "fp32":
        return export_onnx(model, req.output, req.imgsz, req.manifest, req.msda, req.dynamic_batch, req.postprocess,
                           req.top_k, req.opset, req.simplify)
    from converters.onnxruntime.quantize import quantize_onnx_int8
    from runtime.manifest import write_sidecar

    batches = calibration_batches(req.calib, req.manifest, req.calib_images)
    with tempfile.TemporaryDirectory() as tmp:
        float_onnx = export_onnx(model, Path(tmp) / "float.onnx", req.imgsz, req.manifest, req.msda,
                                 req.dynamic_batch, req.postprocess, req.top_k, req.opset, req.simplify)
        quantize_onnx_int8(float_onnx, req.output, batches)
    write_sidecar(req.manifest, req.output)
    return req.output


def build_openvino(model: nn.Module, req: ExportRequest) -> Path:
    from converters.onnx.export import export_onnx
    from converters.openvino.convert import convert_openvino

    batches = calibration_batches(req.calib, req.manifest, req.calib_images) if req.precision == "int8" else None
    with tempfile.TemporaryDirectory() as tmp:
        onnx_manifest = dataclasses.replace(req.manifest, backend="onnxruntime", precision="fp32", custom_ops={})
        float_onnx = export_onnx(model, Path(tmp) / "float.onnx", req.imgsz, onnx_manifest, req.msda,
                                 req.dynamic_batch, req.postprocess, req.top_k, req.opset, req.simplify)
        return convert_openvino(float_onnx, req.output, req.precision, req.manifest, batches)


def _record_accuracy(manifest: Manifest, accuracy: Optional[Dict[str, Any]], source: ModelSource) -> None:
    """Both validation figures of the checkpoint go into the manifest, and the deployed one is printed."""
    from converters.export_defaults import training_accuracy

    accuracy = dict(accuracy) if accuracy is not None else training_accuracy(source)
    if not accuracy:
        return
    manifest.extra["training_accuracy"] = accuracy
    if "val_deployed_mAP" in accuracy:
        size = tuple(accuracy.get("deployed_imgsz") or ())
        same = size == tuple(manifest.preprocess.size)
        log.info("validation mAP %.4f in training, %.4f as deployed%s", accuracy.get("val_mAP", float("nan")),
                 accuracy["val_deployed_mAP"], "" if same else
                 f" at {size[0]}x{size[1]} (this export is {manifest.preprocess.size[0]}x{manifest.preprocess.size[1]}: "
                 "check it with `edgedet val --model ARTIFACT --data D`)" if len(size) == 2 else "")


def _batch_profile(profile: Optional[Sequence[int]]) -> Tuple[int, int, int]:
    if profile is None:
        return (1, 8, 8)
    values = tuple(int(v) for v in profile)
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise ExportError(f"batch_profile must be (min, opt, max) with 1 <= min <= opt <= max, got {tuple(profile)}")
    return values  # type: ignore[return-value]


def export(
    model_or_checkpoint: ModelSource,
    format: str = "onnx",
    output: Optional[Union[str, Path]] = None,
    precision: str = "fp32",
    imgsz: Optional[Sequence[int]] = None,
    dynamic_batch: bool = False,
    msda: Optional[str] = None,
    calib: Any = None,
    postprocess: bool = True,
    class_names: Optional[Sequence[str]] = None,
    top_k: int = 100,
    calib_images: int = 32,
    opset: int = 17,
    experiment: Optional[Dict[str, Any]] = None,
    simplify: bool = True,
    dry_run: bool = False,
    batch_profile: Optional[Sequence[int]] = None,
    overwrite: bool = False,
    score_threshold: Optional[float] = None,
    threshold_images: int = 32,
    dedup_iou: Optional[float] = None,
    threshold_source: str = "given",
    training_accuracy: Optional[Dict[str, Any]] = None,
    input_format: str = "float32_nchw",
    resize: str = "letterbox",
) -> Path:
    """Export a detector -> path of the written artifact (.onnx, .xml or .engine).

    model_or_checkpoint: nn.Module, checkpoint path (edgedet or official) or model name.
    output: artifact path or folder; None = `runs/export/<checkpoint folder>-<stem>/<family>-<msda>-<precision><suffix>`.
    imgsz: fixed network input (H, W), letterboxed by the runtime; None = the checkpoint's training scale
        (data.val_size and the validation images' aspect), 640x640 without a training config (logged).
    msda: None = format default.
    calib: images for INT8 (folder, list of paths, dataset, DataConfig or [N, 3, H, W] array).
    postprocess: True -> labels/boxes(xyxy, input pixels)/scores top-K; False -> raw head outputs.
    experiment: the training ExperimentConfig dict (mean/std of its data) when passing a module.
    simplify: run onnxslim on the ONNX graph (skipped with a log line if it fails).
    dry_run: format="tensorrt" only: write the ONNX the engine would be built from (no TensorRT needed).
    batch_profile: (min, opt, max) batch of a dynamic-batch TensorRT engine's optimisation profile;
        default (1, 8, 8): TensorRT tunes its kernels for the opt batch, so set it to your stream count.
    overwrite: replace existing files at the output path (otherwise refused before any work).
    dedup_iou: the manifest's recommended duplicate filter (class-wise NMS IoU, `outputs.dedup_iou`; None = none),
        which the runtime's commands use when given no --dedup-iou.
    score_threshold: the manifest's recommended minimum score; None = best F1 on up to `threshold_images`
        images of the checkpoint's validation split, or 0.25 when no validation data is readable (logged);
        threshold_source says in the manifest how a given threshold was chosen.
    input_format: "float32_nchw" (normalised image input) or "uint8_nhwc" (letterboxed BGR uint8 frames; the graph
        converts and normalises, so the device's CPU only resizes).
    resize: how the runtime fits frames to `imgsz`: "letterbox" (keep the aspect, pad bottom/right; the padding is
        masked for the mask-trained families) or "stretch" (fill the input, the official RT-DETR recipe; for frames
        whose aspect is close to the training images', e.g. 16:9 video into a 256x448 input).
    training_accuracy: the checkpoint's validation figures for the manifest (`extra["training_accuracy"]`);
        None = read from the checkpoint when one is given.
    """
    if imgsz is not None and (isinstance(imgsz, int) or len(imgsz) != 2 or min(int(s) for s in imgsz) <= 0):
        raise ExportError(f"imgsz must be (H, W) positive integers, got {imgsz!r}")
    if top_k <= 0:
        raise ExportError(f"top_k must be positive, got {top_k}")
    if resize not in ("letterbox", "stretch"):
        raise ExportError(f"resize must be 'letterbox' or 'stretch', got {resize!r}")
    if input_format not in ("float32_nchw", "uint8_nhwc"):
        raise ExportError(f"input_format must be 'float32_nchw' or 'uint8_nhwc', got {input_format!r}")
    profile = _batch_profile(batch_profile)
    if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
        raise ExportError(f"score_threshold must be in [0, 1], got {score_threshold}")
    if dedup_iou is not None and not 0.0 < dedup_iou <= 1.0:
        raise ExportError(f"dedup_iou must be in (0, 1] (0.7 drops only near-copies of one object), got {dedup_iou}")
    from converters.formats import get_format

    fmt0 = get_format(format)  # fail on a misspelt format before loading anything
    check_engine_builder(fmt0, dry_run)
    if output is not None and not (Path(output).is_dir() or str(output).endswith(("/", "\\"))):
        check_outputs(fmt0, Path(output), dry_run, overwrite, [model_or_checkpoint])  # before loading the model
    model, found = resolve_model(model_or_checkpoint)
    model = deployable(model)
    experiment = experiment or found
    fmt, form = validate_request(format, precision, msda, has_msda(model), calib is not None)
    if isinstance(calib, (str, Path)) and precision == "int8":  # a wrong calibration path fails now, not after the export
        from converters.calibration import image_paths

        image_paths(calib)
    form = _resolve_default_msda(fmt, msda, form)
    family = getattr(getattr(model, "config", None), "name", "") or ""
    from converters.export_defaults import default_imgsz, recommend_threshold

    if imgsz is None:
        imgsz, why = default_imgsz(experiment)
        log.info("input size %dx%d (H x W): %s", imgsz[0], imgsz[1], why)
    imgsz_hw = (int(imgsz[0]), int(imgsz[1]))
    check_imgsz(model, imgsz_hw)
    out_path = _output_path(output, fmt, family, form, precision, model_or_checkpoint)
    check_outputs(fmt, out_path, dry_run, overwrite, [model_or_checkpoint])  # before the slow work
    if score_threshold is None:
        score_threshold, threshold_source = recommend_threshold(model, experiment, threshold_images)
    log.info("recommended score threshold %.3g: %s", score_threshold, threshold_source)
    manifest = make_manifest(model, fmt.backend, precision, form, imgsz_hw, 0 if dynamic_batch else 1,
                             postprocess, top_k, class_names, experiment, input_format, resize)
    manifest.outputs = dataclasses.replace(manifest.outputs, score_threshold=float(score_threshold),
                                           score_threshold_source=threshold_source, dedup_iou=dedup_iou)
    _record_accuracy(manifest, training_accuracy, model_or_checkpoint)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    req = ExportRequest(fmt, out_path, precision, form, imgsz_hw,
                        dynamic_batch, postprocess, top_k, calib, calib_images, opset, manifest, simplify, dry_run, profile)
    module_name, fn_name = fmt.builder.split(":")
    builder = getattr(importlib.import_module(module_name), fn_name)
    return Path(builder(model, req))
