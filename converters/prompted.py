"""Export the prompted detector (`trex`) as two artifacts plus a text-prompt bank.

    enc, det = export_prompted(model, "out/", format="onnx", imgsz=(640, 640))

- prompt encoder `trex-prompt-encoder.{onnx,xml}`: inputs
      images          float32 [1, 3, H, W] (normalised like `runtime.preprocess`)
      prompt_boxes    float32 [1, K, N, 4] cxcywh normalised to the network input (w = h = 0: a point)
      prompt_box_mask bool    [1, K, N] True = a real box
  outputs prompt_embeddings float32 [1, K, Dp] (unit length), prompt_valid bool [1, K].
- detector `trex-detector.{onnx,xml}`: inputs images [1, 3, H, W], prompt_embeddings float32
  [1, K, Dp], prompt_mask bool [1, K] (True = a real prompt); outputs labels [1, T] (prompt slot),
  boxes [1, T, 4] xyxy network pixels, scores [1, T] (NMS-free top-T over queries x prompts).
- `text_prompts.npz` (names, embeddings [C, Dp]): text embeddings computed here in PyTorch, so
  the torch-free runtime can prompt with those names.
- optionally (`text_encoder=True`, MiniLM models) `trex-text-encoder.{onnx,xml}` + `trex-text-vocab.txt`:
  input_ids / attention_mask int64 [T, L] (`runtime.wordpiece` tokens) -> text_embeddings [T, Dp],
  so the runtime can prompt with any text.
Both manifests have family `trex` and `extra["prompted"]` describing the inputs. MSDA export forms
(`fused`, `gather`, `grid_sample`) and OpenVINO conversion reuse `converters.onnx` / `converters.openvino`.
`format="tensorrt"` writes both ONNX graphs with the MSDA plugin node (`converters.tensorrt`), then builds
`trex-prompt-encoder.engine` / `trex-detector.engine` where TensorRT is installed; `dry_run=True` stops
after the ONNX (build on the device). The optional text encoder stays ONNX (run once per text).
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from converters.api import make_manifest
from converters.formats import ExportError, validate_request
from converters.onnx.export import finalize_onnx, topk_detections
from converters.onnx.msda_forms import FUSED_DOMAIN, FUSED_OPSET, form_available, msda_form
from edgedet.nn.padding_mask import as_trained
from runtime.manifest import Manifest, OutputSpec

log = logging.getLogger(__name__)

ENCODER_STEM = "trex-prompt-encoder"
DETECTOR_STEM = "trex-detector"
TEXT_BANK = "text_prompts.npz"
ENCODER_INPUTS = ["images", "prompt_boxes", "prompt_box_mask", "valid_hw"]
ENCODER_OUTPUTS = ["prompt_embeddings", "prompt_valid"]
DETECTOR_INPUTS = ["images", "prompt_embeddings", "prompt_mask", "valid_hw"]
DETECTOR_OUTPUTS = ["labels", "boxes", "scores"]
TEXT_ENCODER_STEM = "trex-text-encoder"
TEXT_VOCAB = "trex-text-vocab.txt"
TEXT_INPUTS = ["input_ids", "attention_mask"]
TEXT_OUTPUTS = ["text_embeddings"]
# format -> precisions the two prompted artifacts can take
PROMPTED_FORMATS = {"onnx": ("fp32",), "openvino": ("fp32", "fp16"), "tensorrt": ("fp32", "fp16")}


class PromptEncoderGraph(nn.Module):
    """images, prompt_boxes (cxcywh normalised to the valid region), prompt_box_mask, valid_hw ->
    prompt_embeddings [1, K, Dp], prompt_valid [1, K]. The padding mask is rebuilt from valid_hw as in training."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, prompt_boxes: Tensor, prompt_box_mask: Tensor, valid_hw: Tensor):
        images, mask = as_trained(images, valid_hw)
        return self.model.encode_visual_prompts(images, prompt_boxes, prompt_box_mask, mask)


class PromptedDetectorGraph(nn.Module):
    """images, prompt_embeddings, prompt_mask, valid_hw -> labels, boxes (xyxy network pixels), scores (top-T)."""

    def __init__(self, model: nn.Module, top_k: int):
        super().__init__()
        self.model, self.top_k = model, top_k

    def forward(self, images: Tensor, prompt_embeddings: Tensor, prompt_mask: Tensor, valid_hw: Tensor):
        out = self.model(*as_trained(images, valid_hw), prompts=prompt_embeddings, prompt_mask=prompt_mask)
        return topk_detections(out["pred_logits"], out["pred_boxes"], valid_hw, "sigmoid", self.top_k)


class TextEncoderGraph(nn.Module):
    """input_ids, attention_mask [T, L] -> text_embeddings [T, Dp]: frozen MiniLM + the trained projection."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone, self.proj = model.text_encoder.backbone, model.text_encoder.proj

    def forward(self, input_ids: Tensor, attention_mask: Tensor):
        return torch.nn.functional.normalize(self.proj(self.backbone(input_ids, attention_mask)), dim=-1)


def _export_graph(graph: nn.Module, args: Tuple[Tensor, ...], input_names, output_names, path: Path, form: str,
                  manifest: Manifest, opset: int, simplify: bool, dynamic_axes=None) -> Path:
    """Trace `graph` to ONNX at `path` with the manifest inside and beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    from converters.quiet import filtered_stderr

    from runtime.atomic import temp_name

    raw = temp_name(path, ".onnx")  # the tracer's graph; `path` appears only once complete
    with msda_form(graph, form), torch.no_grad(), warnings.catch_warnings(), filtered_stderr():
        warnings.simplefilter("ignore")  # tracer warnings about python constants: the sizes are fixed
        try:
            torch.onnx.export(graph, args, str(raw), dynamo=False, opset_version=opset, input_names=input_names,
                              output_names=output_names, custom_opsets={FUSED_DOMAIN: FUSED_OPSET} if form == "fused" else None,
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
        except Exception as e:  # the exporter raises several error types
            raw.unlink(missing_ok=True)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"ONNX export of {path.name} failed ({first}); the model uses an op opset {opset} cannot express") from e
    return finalize_onnx(path, manifest, simplify, source=raw)


def _resolve_form(format: str, msda: Optional[str], precision: str = "fp32") -> str:
    fmt, form = validate_request(format, precision, msda, True, False)
    if msda is None and form == "fused" and fmt.name == "openvino":
        from converters.openvino.convert import fused_extension_available

        if not fused_extension_available():
            form = "gather" if form_available("gather") else "grid_sample"
            log.info("OpenVINO MSDA extension is not built; exporting msda='%s'", form)
    return form


def write_prompt_bank(path: Union[str, Path], names: Sequence[str], embeddings: np.ndarray) -> Path:
    """A prompt file (.npz): names [K] str, embeddings [K, Dp] unit length, sums (= embeddings), counts (= 1)."""
    emb = np.asarray(embeddings, np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(names):
        raise ValueError(f"embeddings must be [len(names)={len(names)}, Dp], got {emb.shape}")
    from runtime.atomic import atomic_write

    atomic_write(path, lambda f: np.savez(f, names=np.asarray(list(names), dtype=str), embeddings=emb, sums=emb,
                                          counts=np.ones(len(names), np.float32)))
    return Path(path)


def _refuse_existing(out_dir: Path, overwrite: bool) -> None:
    """Before the slow work: an earlier export in `out_dir` is replaced only when asked."""
    from runtime.safety import refuse_overwrite

    if not out_dir.is_dir():
        return
    stems = (ENCODER_STEM, DETECTOR_STEM, TEXT_ENCODER_STEM)
    for f in sorted(out_dir.iterdir()):
        if f.name == TEXT_BANK or f.name.split(".")[0] in stems:
            refuse_overwrite(f, overwrite, flag="overwrite=True (--exist-ok)")


def export_prompted(model: nn.Module, output_dir: Union[str, Path], format: str = "onnx", imgsz: Sequence[int] = (640, 640),
                    msda: Optional[str] = None, top_k: int = 100, text_prompts: Optional[Sequence[str]] = None,
                    opset: int = 17, simplify: bool = True, experiment: Optional[Dict[str, Any]] = None,
                    text_encoder: bool = False, precision: str = "fp32", dry_run: bool = False,
                    overwrite: bool = False, resize: str = "letterbox") -> Tuple[Path, Path]:
    """Write the prompt encoder and the prompted detector -> (encoder_path, detector_path).

    format: "onnx" | "openvino" | "tensorrt". msda: None = the format's default form. text_prompts:
    names stored in `text_prompts.npz` (default: model.config.class_names; [] = none).
    text_encoder: also write the MiniLM text encoder (~90 MB) and its vocabulary, for any text at run time.
    precision: "fp32"; "fp16" for openvino (compressed weights) and tensorrt engines.
    dry_run: tensorrt only: write the two plugin ONNX graphs TensorRT would parse and return their paths.
    overwrite: replace artifacts already in `output_dir` (otherwise refused before any work).
    resize: "letterbox" (padding masked via the valid_hw input) or "stretch", as `converters.export`.
    """
    cfg = getattr(model, "config", None)
    if getattr(cfg, "name", "") != "trex":
        raise ExportError(f"export_prompted needs a 'trex' model, got {getattr(cfg, 'name', type(model).__name__)!r}; use converters.export")
    if format not in PROMPTED_FORMATS:
        raise ExportError(f"prompted export supports format {', '.join(map(repr, PROMPTED_FORMATS))}, got '{format}'")
    if precision not in PROMPTED_FORMATS[format]:
        raise ExportError(f"prompted {format} export supports precision {', '.join(PROMPTED_FORMATS[format])}, "
                          f"got '{precision}' (INT8 would need prompt-conditioned calibration data)")
    if dry_run and format != "tensorrt":
        raise ExportError("dry_run applies to format='tensorrt' only (it writes the ONNX TensorRT would build from)")
    if isinstance(imgsz, int) or len(imgsz) != 2 or min(int(s) for s in imgsz) <= 0:
        raise ExportError(f"imgsz must be (H, W) positive integers, got {imgsz!r}")
    if format == "tensorrt" and not dry_run:
        from converters.tensorrt.builder import import_tensorrt

        import_tensorrt()  # fail before the (slow) ONNX exports when TensorRT is absent
    form = _resolve_form(format, msda, precision)
    h, w = int(imgsz[0]), int(imgsz[1])
    k, n, dp = cfg.max_prompts, cfg.max_prompt_boxes, cfg.prompt_dim
    out_dir = Path(output_dir)
    _refuse_existing(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    names = list(cfg.class_names) if text_prompts is None else list(text_prompts)
    bank = ""
    if names:
        with torch.no_grad():
            write_prompt_bank(out_dir / TEXT_BANK, names, model.encode_text_prompts(names).cpu().numpy())
        bank = TEXT_BANK
    if text_encoder and cfg.text_encoder != "minilm":
        raise ExportError(f"text_encoder=True needs a model with text_encoder 'minilm', not '{cfg.text_encoder}'; "
                          "use text_prompts=[...] (a text bank) instead")
    text_suffix = ".xml" if format == "openvino" else ".onnx"  # TensorRT: the text encoder stays ONNX
    info = {"max_prompts": k, "max_prompt_boxes": n, "prompt_dim": dp, "text_bank": bank,
            "text_encoder": TEXT_ENCODER_STEM + text_suffix if text_encoder else "",
            "text_vocab": TEXT_VOCAB if text_encoder else "",
            "box_format": "cxcywh normalised to the valid region (the letterboxed image); w = h = 0 is a point"}
    backend = {"openvino": "openvino", "tensorrt": "tensorrt"}.get(format, "onnxruntime")
    base = make_manifest(model, backend, precision, form, (h, w), 1, True, top_k, [], experiment or {}, resize=resize)
    base = dataclasses.replace(base, family="trex", valid_input="valid_hw")
    enc_manifest = dataclasses.replace(
        base, outputs=OutputSpec(postprocess=False, names=list(ENCODER_OUTPUTS), score_activation="sigmoid", top_k=top_k),
        extra={"prompted": {**info, "role": "prompt_encoder", "inputs": ENCODER_INPUTS, "outputs": ENCODER_OUTPUTS}})
    det_manifest = dataclasses.replace(
        base, extra={"prompted": {**info, "role": "detector", "inputs": DETECTOR_INPUTS, "outputs": DETECTOR_OUTPUTS}})
    valid = torch.tensor([[max(1, h * 3 // 4), max(1, w * 2 // 3)]], dtype=torch.int32)  # traced with padding
    enc_args = (torch.zeros(1, 3, h, w), torch.full((1, k, n, 4), 0.5), torch.ones(1, k, n, dtype=torch.bool), valid)
    det_args = (torch.zeros(1, 3, h, w), torch.nn.functional.normalize(torch.ones(1, k, dp), dim=-1),
                torch.ones(1, k, dtype=torch.bool), valid)
    jobs = [(PromptEncoderGraph(model).eval(), enc_args, ENCODER_INPUTS, ENCODER_OUTPUTS, ENCODER_STEM, enc_manifest),
            (PromptedDetectorGraph(model, top_k).eval(), det_args, DETECTOR_INPUTS, DETECTOR_OUTPUTS, DETECTOR_STEM, det_manifest)]
    axes = [None, None]
    if text_encoder:
        tokenizer = model.text_encoder.backbone.tokenizer
        shutil.copy2(tokenizer.vocab_file, out_dir / TEXT_VOCAB)
        ids, attn = (torch.from_numpy(a) for a in tokenizer.batch(["a photo of a small red circle"]))
        text_manifest = dataclasses.replace(
            base, msda="", valid_input="", backend="openvino" if format == "openvino" else "onnxruntime", outputs=OutputSpec(postprocess=False, names=list(TEXT_OUTPUTS), score_activation="sigmoid"),
            extra={"prompted": {**info, "role": "text_encoder", "inputs": TEXT_INPUTS, "outputs": TEXT_OUTPUTS}})
        jobs.append((TextEncoderGraph(model).eval(), (ids, attn), TEXT_INPUTS, TEXT_OUTPUTS, TEXT_ENCODER_STEM, text_manifest))
        axes.append({"input_ids": {0: "texts", 1: "tokens"}, "attention_mask": {0: "texts", 1: "tokens"},
                     "text_embeddings": {0: "texts"}})
    paths = []
    for (graph, args, ins, outs, stem, manifest), dyn in zip(jobs, axes):
        if format == "onnx":
            paths.append(_export_graph(graph, args, ins, outs, out_dir / f"{stem}.onnx", form, manifest, opset, simplify, dyn))
        elif format == "tensorrt" and stem == TEXT_ENCODER_STEM:  # no MSDA inside: plain ONNX for ONNX Runtime
            paths.append(_export_graph(graph, args, ins, outs, out_dir / f"{stem}.onnx", "", manifest, opset, simplify, dyn))
        elif format == "tensorrt":
            paths.append(_tensorrt_artifact(graph, args, ins, outs, out_dir / f"{stem}.engine", form, manifest, precision,
                                            opset, simplify, dry_run))
        else:
            from converters.openvino.convert import convert_openvino

            with tempfile.TemporaryDirectory() as tmp:
                onnx_manifest = dataclasses.replace(manifest, backend="onnxruntime", precision="fp32", custom_ops={})
                onnx_path = _export_graph(graph, args, ins, outs, Path(tmp) / f"{stem}.onnx", form, onnx_manifest, opset,
                                          simplify, dyn)
                paths.append(convert_openvino(onnx_path, out_dir / f"{stem}.xml", precision, manifest))
    log.info("wrote prompted artifacts %s, %s (msda=%s)", paths[0], paths[1], form)
    return paths[0], paths[1]


def _tensorrt_artifact(graph: nn.Module, args, input_names, output_names, engine_path: Path, form: str, manifest: Manifest,
                       precision: str, opset: int, simplify: bool, dry_run: bool) -> Path:
    """ONNX with the MSDA plugin node beside `engine_path`, then the engine (the ONNX path on a dry run)."""
    from converters.tensorrt.engine import PLUGIN_TARGETS, engine_from_onnx, rewrite_onnx_file

    onnx_manifest = dataclasses.replace(manifest, backend="onnxruntime", precision="fp32", custom_ops={})
    onnx_form = "fused" if form in PLUGIN_TARGETS else form
    onnx_path = _export_graph(graph, args, input_names, output_names, engine_path.with_suffix(".onnx"), onnx_form,
                              onnx_manifest, opset, simplify)
    rewrite_onnx_file(onnx_path, form)
    if dry_run:
        log.info("dry run: wrote %s; build its engine on the device (trtexec --onnx=%s)", onnx_path, onnx_path.name)
        return onnx_path
    return engine_from_onnx(onnx_path, engine_path, manifest, form, precision)


__all__ = ["export_prompted", "write_prompt_bank", "PromptEncoderGraph", "PromptedDetectorGraph", "TEXT_BANK"]
