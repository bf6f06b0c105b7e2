"""PyTorch detector -> ONNX file with fixed I/O names and the edgedet manifest inside.

Input `images` float32 [B, 3, H, W], normalised exactly like `runtime.preprocess` (or, with the manifest's
`preprocess.input_format` "uint8_nhwc", the letterboxed BGR frames uint8 [B, H, W, 3], normalised in the graph); families trained with a
padding mask also take `valid_hw` int32 [B, 2], each image's (h, w) inside the letterboxed input, and build
the same mask inside the graph (positional encodings, attention and valid ratios ignore the padding exactly
as in training); their boxes are normalised to that region, so the top-K boxes are scaled by it.
Outputs with postprocess=True (NMS-free top-K):
    labels [B, K] int64, boxes [B, K, 4] xyxy in network-input pixels, scores [B, K] float32
and with postprocess=False the raw head outputs:
    pred_logits [B, Q, C], pred_boxes [B, Q, 4] normalised cxcywh.
"""
from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from converters.formats import ExportError
from converters.onnx.msda_forms import FUSED_DOMAIN, FUSED_OPSET, msda_form, register_fused_schema
from converters.quiet import filtered_stderr
from edgedet.nn.padding_mask import forward_letterboxed, uses_padding_mask
from runtime.atomic import atomic_path, temp_name
from runtime.manifest import METADATA_KEY, Manifest, PreprocessSpec, write_sidecar

log = logging.getLogger(__name__)

INPUT_NAME = "images"
VALID_INPUT_NAME = "valid_hw"
POSTPROCESSED_OUTPUTS = ["labels", "boxes", "scores"]
RAW_OUTPUTS = ["pred_logits", "pred_boxes"]
DEFAULT_OPSET = 17


def output_names(postprocess: bool) -> List[str]:
    return list(POSTPROCESSED_OUTPUTS if postprocess else RAW_OUTPUTS)


def topk_detections(logits: Tensor, boxes_cxcywh: Tensor, image_hw, activation: str, top_k: int):
    """NMS-free top-K over the head outputs.

    logits [B, Q, C], boxes_cxcywh [B, Q, 4] normalised -> labels [B, K] int64,
    boxes_xyxy [B, K, 4] in pixels of an `image_hw` input (H, W), scores [B, K]. `image_hw` may be a
    [B, 2] tensor of per-image sizes (the valid regions of mask-trained families).
    sigmoid: top-K over all Q*C (query, class) pairs; softmax: drop the last (no-object)
    class, best class per query, then top-K queries.
    """
    b, q, c = logits.shape
    if activation == "sigmoid":
        prob = logits.sigmoid().flatten(1)  # [B, Q*C]
        scores, index = prob.topk(min(top_k, q * c), dim=1)
        query = torch.div(index, c, rounding_mode="floor")
        labels = index - query * c
    elif activation == "softmax":
        prob = logits.softmax(-1)[..., :-1]
        best, best_label = prob.max(-1)
        scores, query = best.topk(min(top_k, q), dim=1)
        labels = best_label.gather(1, query)
    else:
        raise ExportError(f"unknown score_activation '{activation}'; expected 'sigmoid' or 'softmax'")
    cx, cy, w, h = boxes_cxcywh.unbind(-1)
    xyxy = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)
    if isinstance(image_hw, Tensor):
        hw = image_hw.to(xyxy.dtype)
        scale = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], -1)[:, None, :]  # [B, 1, 4]
    else:
        scale = torch.tensor([image_hw[1], image_hw[0], image_hw[1], image_hw[0]], dtype=xyxy.dtype, device=xyxy.device)
    xyxy = xyxy * scale
    picked = xyxy.gather(1, query.unsqueeze(-1).expand(-1, -1, 4))
    return labels.to(torch.int64), picked, scores


class InGraphNormalize(nn.Module):
    """uint8 [B, H, W, 3] letterboxed BGR frames -> the float32 [B, 3, H, W] network input, computed as the
    runtime's Preprocessor does ((x / 255 - mean) / std in float32, channels in the spec's order)."""

    def __init__(self, spec: PreprocessSpec):
        super().__init__()
        self.bgr_to_rgb = spec.channel_order.upper() == "RGB"
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, frames: Tensor) -> Tensor:
        x = frames.permute(0, 3, 1, 2).to(torch.float32)
        if self.bgr_to_rgb:
            x = x.flip(1)
        return (x / 255.0 - self.mean) / self.std


class DeployModel(nn.Module):
    """The detector plus (optionally) postprocessing, with tensor outputs only.

    forward(images [B, 3, H, W], valid_hw [B, 2] int or None). With `valid_hw` (families trained with a
    padding mask) the mask is rebuilt from it and the boxes are scaled by each image's valid region;
    without it the whole input is the image (the mask-free families, and a letterbox without padding).
    """

    def __init__(self, model: nn.Module, postprocess: bool = True, top_k: int = 100, preprocess: Optional[PreprocessSpec] = None):
        super().__init__()
        self.model = model
        self.postprocess = postprocess
        self.top_k = top_k
        self.activation = getattr(model, "score_activation", "softmax")
        self.takes_valid_region = uses_padding_mask(model)
        self.normalize = InGraphNormalize(preprocess) if preprocess is not None and preprocess.input_format == "uint8_nhwc" else None

    def forward(self, images: Tensor, valid_hw: Optional[Tensor] = None):
        if self.normalize is not None:
            images = self.normalize(images)
        if valid_hw is None:
            out = self.model(images)
            size: object = (images.shape[-2], images.shape[-1])
        else:
            out = forward_letterboxed(self.model, images, valid_hw)
            size = valid_hw
        logits, boxes = out["pred_logits"], out["pred_boxes"]
        if not self.postprocess:
            return logits, boxes
        return topk_detections(logits, boxes, size, self.activation, self.top_k)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _slim(model_proto, has_custom: bool):
    """Simplify with onnxslim; keep the original graph if onnxslim fails (e.g. on custom nodes)."""
    try:
        import onnxslim
    except ImportError:
        log.info("onnxslim is not installed; ONNX graph left unsimplified")
        return model_proto
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return onnxslim.slim(model_proto)
    except Exception as e:  # onnxslim raises many types; any failure means "keep the graph"
        what = "graph with the fused MSDA node" if has_custom else "graph"
        log.info("onnxslim could not simplify the %s (%s); keeping the unsimplified ONNX", what, _first_line(e))
        return model_proto


def embed_manifest(model_proto, manifest: Manifest) -> None:
    """Put the manifest JSON in `metadata_props["edgedet"]` (replacing an older one)."""
    kept = [p for p in model_proto.metadata_props if p.key != METADATA_KEY]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(kept)
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, manifest.to_json()


def finalize_onnx(path: Path, manifest: Manifest, simplify: bool, source: Optional[Path] = None) -> Path:
    """After torch.onnx.export: simplify, embed the manifest, check, save, and write the sidecar.
    source: the tracer's graph when it is not `path` (a temporary file, removed here)."""
    import onnx

    try:
        proto = onnx.load(str(source or path))
    finally:
        if source is not None:
            Path(source).unlink(missing_ok=True)
    has_custom = any(n.domain == FUSED_DOMAIN for n in proto.graph.node)
    if has_custom:
        register_fused_schema()
    if simplify:
        proto = _slim(proto, has_custom)
    embed_manifest(proto, manifest)
    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp:  # an interrupted save never leaves a truncated model.onnx
        onnx.save(proto, str(tmp))
    write_sidecar(manifest, path)  # last: marks the export finished
    return path


def export_onnx(
    model: nn.Module,
    output: Path,
    imgsz: Tuple[int, int],
    manifest: Manifest,
    msda: str = "grid_sample",
    dynamic_batch: bool = False,
    postprocess: bool = True,
    top_k: int = 100,
    opset: int = DEFAULT_OPSET,
    simplify: bool = True,
) -> Path:
    """Write `output` (.onnx) plus its sidecar manifest -> path of the ONNX file.

    model: a detector following `edgedet.models.base` (eval mode is set here).
    imgsz: network input (H, W). msda: "" for models without deformable attention.
    """
    if opset < 17:
        raise ExportError(f"opset {opset} is too old; edgedet exports need opset >= 17")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    deploy = DeployModel(model, postprocess=postprocess, top_k=top_k, preprocess=manifest.preprocess).eval()
    names = output_names(postprocess)
    if deploy.normalize is not None:
        dummy = torch.zeros(1, int(imgsz[0]), int(imgsz[1]), 3, dtype=torch.uint8)
    else:
        dummy = torch.zeros(1, 3, int(imgsz[0]), int(imgsz[1]))
    inputs = [INPUT_NAME]
    args: Tuple[Tensor, ...] = (dummy,)
    if deploy.takes_valid_region:  # traced with a padded image so no branch folds the mask away
        inputs.append(VALID_INPUT_NAME)
        args = (dummy, torch.tensor([[max(1, int(imgsz[0]) * 3 // 4), max(1, int(imgsz[1]) * 2 // 3)]], dtype=torch.int32))
    # the manifest says what the graph takes, whoever built it
    manifest = dataclasses.replace(manifest, valid_input=VALID_INPUT_NAME if deploy.takes_valid_region else "")
    axes: Optional[Dict[str, Dict[int, str]]] = None
    if dynamic_batch:
        axes = {n: {0: "batch"} for n in inputs + names}
    raw = temp_name(output, ".onnx")  # the tracer's graph; `output` appears only once complete
    with msda_form(model, msda), torch.no_grad(), warnings.catch_warnings(), filtered_stderr():
        # Tracer warnings about python constants are expected: the input size is fixed.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                deploy,
                args,
                str(raw),
                dynamo=False,
                opset_version=opset,
                input_names=inputs,
                output_names=names,
                dynamic_axes=axes,
                custom_opsets={FUSED_DOMAIN: FUSED_OPSET} if msda == "fused" else None,
                do_constant_folding=True,
            )
        except Exception as e:  # the exporter raises RuntimeError/UnsupportedOperatorError/SymbolicValueError
            raw.unlink(missing_ok=True)
            raise ExportError(
                f"ONNX export failed: the model uses an operation that cannot be exported at opset {opset} "
                f"({_first_line(e)}); replace that operation or register an ONNX symbolic for it"
            ) from e
    finalize_onnx(output, manifest, simplify, source=raw)
    # debug: intermediate graphs live in temp folders; the caller reports the artifact it made
    log.debug("wrote %s (%s, msda=%s, outputs %s)", output, "dynamic batch" if dynamic_batch else "batch 1", msda or "-", names)
    return output
