"""The manifest every exported artifact carries: how to feed it and how to read its outputs.

Written by `converters`, read by `runtime`, so the runtime never guesses preprocessing.
Stored inside the artifact where the format allows (ONNX `metadata_props["edgedet"]`,
OpenVINO `rt_info["edgedet"]["manifest"]`) and always as a sidecar JSON next to it:
`model.onnx` -> `model.onnx.edgedet.json` (the legacy `model.edgedet.json` is still read).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

MANIFEST_VERSION = 1
METADATA_KEY = "edgedet"
# Families whose models were trained with a padding mask: an artifact of theirs without `valid_input`
# predates it and runs with the padding seen as image content (the documented fallback, with a warning).
MASK_FAMILIES = ("detr", "deformable_detr", "dab_detr", "dino", "co_dino", "co_deformable_detr", "trex", "rfdetr")


class ManifestError(ValueError):
    """A missing or malformed manifest."""


@dataclass
class PreprocessSpec:
    size: Tuple[int, int] = (640, 640)  # network input (H, W)
    resize: str = "letterbox"  # letterbox (keep ratio, pad bottom/right) | stretch
    mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: Tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    # Letterbox padding in pixel units; the mean colour normalises to ~0, like the
    # zero padding the model saw in training.
    pad_value: Tuple[int, int, int] = (124, 116, 104)
    # What the graph's image input takes: "float32_nchw" (normalised [B, 3, H, W], the default) or
    # "uint8_nhwc" (the letterboxed BGR frames as they are, [B, H, W, 3] uint8; the graph converts, orders
    # the channels and normalises, so the CPU only resizes: the cheap path for a Jetson's few cores).
    input_format: str = "float32_nchw"


@dataclass
class OutputSpec:
    # True: outputs are labels [B, K] int64, boxes [B, K, 4] xyxy in network-input pixels,
    # scores [B, K] (top-K, NMS-free). False: raw pred_logits [B, Q, C], pred_boxes [B, Q, 4] cxcywh.
    postprocess: bool = True
    names: List[str] = field(default_factory=lambda: ["labels", "boxes", "scores"])
    score_activation: str = "sigmoid"  # sigmoid (focal-loss families) | softmax (DETR, last class = no-object)
    top_k: int = 100
    # Recommended minimum score (best F1 on validation data at export, else a documented fallback);
    # the runtime uses it when the user gives no threshold. score_threshold_source says how it was chosen.
    score_threshold: float = 0.25
    score_threshold_source: str = "fallback"


@dataclass
class Manifest:
    family: str = ""
    class_names: List[str] = field(default_factory=list)
    input_name: str = "images"
    # The graph input taking each image's (h, w) inside the letterboxed network input, int32 [B, 2]:
    # families trained with a padding mask (DETR, Deformable, DAB, DINO, Co-DETR, T-Rex) rebuild that
    # mask from it, and their raw pred_boxes are normalised to that region. "" = none (mask-free
    # families, and artifacts written before the valid-region input existed, which see the padding as image content).
    valid_input: str = ""
    batch: int = 1  # 0 = dynamic
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    outputs: OutputSpec = field(default_factory=OutputSpec)
    backend: str = "onnxruntime"  # onnxruntime | openvino | tensorrt
    precision: str = "fp32"
    msda: str = ""  # fused | gather | grid_sample | "" (no deformable attention)
    # backend name -> custom-op library file name, looked up next to the artifact first
    custom_ops: Dict[str, str] = field(default_factory=dict)
    edgedet_version: str = ""
    model_config: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)
    format_version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Manifest":
        if not isinstance(data, dict):
            raise ManifestError("manifest must be a JSON object")
        if data.get("format_version", MANIFEST_VERSION) > MANIFEST_VERSION:
            raise ManifestError(
                f"manifest format {data['format_version']} is newer than this runtime understands "
                f"({MANIFEST_VERSION}); upgrade edgedet"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ManifestError(f"unknown manifest keys {unknown}; was it written by a newer edgedet?")
        data = dict(data)
        pre = data.pop("preprocess", {}) or {}
        out = data.pop("outputs", {}) or {}
        pre = {k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()}
        return cls(preprocess=PreprocessSpec(**pre), outputs=OutputSpec(**out), **data)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ManifestError(f"manifest is not valid JSON: {e}") from e


SIDECAR_SUFFIX = ".edgedet.json"


def sidecar_path(artifact: Union[str, Path]) -> Path:
    """`dir/model.onnx` -> `dir/model.onnx.edgedet.json`: one sidecar per artifact file, so a
    `model.onnx` and a `model.xml` in one folder never share (and overwrite) a manifest."""
    p = Path(artifact)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def legacy_sidecar_path(artifact: Union[str, Path]) -> Path:
    """The name earlier versions wrote (`dir/model.edgedet.json`), still read for existing artifacts."""
    p = Path(artifact)
    return p.with_name(p.stem + SIDECAR_SUFFIX)


def write_sidecar(manifest: Manifest, artifact: Union[str, Path]) -> Path:
    path = sidecar_path(artifact)
    path.write_text(manifest.to_json())
    return path


def read_sidecar(artifact: Union[str, Path]) -> Optional[Manifest]:
    """The artifact's sidecar manifest (its own name first, then the legacy stem name), or None."""
    for path in (sidecar_path(artifact), legacy_sidecar_path(artifact)):
        if path.is_file():
            return Manifest.from_json(path.read_text())
    return None
