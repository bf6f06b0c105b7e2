"""The manifest every exported artifact carries: how to feed it and how to read its outputs.

Written by `converters`, read by `runtime`, so the runtime never guesses preprocessing.
Stored inside the artifact where the format allows (ONNX `metadata_props["edgedet"]`,
OpenVINO `rt_info["edgedet"]["manifest"]`) and always as a sidecar JSON next to it:
`model.onnx` -> `model.onnx.edgedet.json` (the legacy `model.edgedet.json` is still read).
"""
from __future__ import annotations

import json
import math
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


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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
    # Recommended duplicate filter (class-wise NMS IoU, see Detections.suppress_duplicates); None = off.
    # Written only when set, so artifacts without one stay readable by older runtimes.
    dedup_iou: Optional[float] = None


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
        data = asdict(self)
        if data["outputs"].get("dedup_iou") is None:
            data["outputs"].pop("dedup_iou", None)
        return json.dumps(data, indent=2)

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
        for section, spec in (("preprocess", PreprocessSpec), ("outputs", OutputSpec)):
            given = pre if section == "preprocess" else out
            if not isinstance(given, dict):
                raise ManifestError(f"manifest '{section}' must be an object, got {type(given).__name__}")
            wrong = sorted(set(given) - {f.name for f in fields(spec)})
            if wrong:
                raise ManifestError(f"unknown manifest keys {[section + '.' + k for k in wrong]}; was it written by a newer edgedet?")
        pre = {k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()}
        manifest = cls(preprocess=PreprocessSpec(**pre), outputs=OutputSpec(**out), **data)
        manifest.validate()
        return manifest

    def validate(self) -> None:
        """Values that would make every frame give no (or wrong) detections without a word: refused here."""
        pre, out = self.preprocess, self.outputs
        if not isinstance(self.class_names, list) or not all(isinstance(n, str) for n in self.class_names):
            raise ManifestError("manifest class_names must be a list of strings")
        size = pre.size
        if (not isinstance(size, tuple) or len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
            raise ManifestError(f"manifest preprocess.size must be [H, W] positive integers, got {list(size) if isinstance(size, tuple) else size!r}")
        for name in ("mean", "std"):
            values = getattr(pre, name)
            if (not isinstance(values, tuple) or len(values) != 3
                    or not all(_is_number(v) and math.isfinite(v) for v in values)):
                raise ManifestError(f"manifest preprocess.{name} must be 3 finite numbers, got {values!r}")
        if any(v == 0 for v in pre.std):
            raise ManifestError(f"manifest preprocess.std {list(pre.std)} has a 0 (division by zero); use the training std")
        t = out.score_threshold
        if not _is_number(t) or not math.isfinite(t) or not 0.0 <= t <= 1.0:
            raise ManifestError(f"manifest outputs.score_threshold must be a number in [0, 1], got {t!r}")
        d = out.dedup_iou
        if d is not None and (not _is_number(d) or not 0.0 < d <= 1.0):
            raise ManifestError(f"manifest outputs.dedup_iou must be a number in (0, 1] or absent, got {d!r}")
        if not isinstance(out.top_k, int) or isinstance(out.top_k, bool) or out.top_k <= 0:
            raise ManifestError(f"manifest outputs.top_k must be a positive integer, got {out.top_k!r}")

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        # JSON's NaN / Infinity are not numbers a manifest can hold: parsed as such, refused by validate()
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


FILES_KEY = "artifact_files"  # sidecar only: file name -> size in bytes when the export finished


def artifact_data_files(artifact: Union[str, Path]) -> List[Path]:
    """The files that hold the model itself: the artifact, and an OpenVINO graph's weights."""
    p = Path(artifact)
    return [p, p.with_suffix(".bin")] if p.suffix == ".xml" else [p]


def write_sidecar(manifest: Manifest, artifact: Union[str, Path]) -> Path:
    """Written atomically and after the artifact (a complete sidecar marks a finished export), with the
    artifact's file sizes, so a model file replaced by an export interrupted before its sidecar is caught."""
    import dataclasses

    from runtime.atomic import atomic_write_text

    sizes = {f.name: f.stat().st_size for f in artifact_data_files(artifact) if f.is_file()}
    extra = {k: v for k, v in (manifest.extra if isinstance(manifest.extra, dict) else {}).items() if k != FILES_KEY}
    if sizes:
        extra[FILES_KEY] = sizes
    return atomic_write_text(sidecar_path(artifact), dataclasses.replace(manifest, extra=extra).to_json())


def sidecar_mismatch(manifest: Manifest, artifact: Union[str, Path]) -> Optional[str]:
    """Why the sidecar does not describe the artifact's files as they are now (None when it does, or
    when it recorded no sizes: written by an earlier version or by hand)."""
    recorded = getattr(manifest, "recorded_sizes", None)
    if not isinstance(recorded, dict):
        return None
    for f in artifact_data_files(artifact):
        if f.name in recorded:
            size = f.stat().st_size if f.is_file() else None
            if size != recorded[f.name]:
                now = "missing" if size is None else f"{size} bytes"
                return f"{f.name} is {now} but its sidecar recorded {recorded[f.name]} bytes"
    return None


def read_sidecar(artifact: Union[str, Path]) -> Optional[Manifest]:
    """The artifact's sidecar manifest (its own name first, then the legacy stem name), or None."""
    for path in (sidecar_path(artifact), legacy_sidecar_path(artifact)):
        if path.is_file():
            try:
                manifest = Manifest.from_json(path.read_text())
            except (ManifestError, TypeError, UnicodeDecodeError) as e:  # TypeError: a value of the wrong kind
                raise ManifestError(f"malformed manifest {path}: {e}; fix it or re-export the model") from None
            # The sizes describe the files, not the model: kept off the manifest's fields (so it equals the
            # embedded one) for `sidecar_mismatch`.
            extra = manifest.extra if isinstance(manifest.extra, dict) else {}
            manifest.recorded_sizes = extra.pop(FILES_KEY, None)  # type: ignore[attr-defined]
            return manifest
    return None
