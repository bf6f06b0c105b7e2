"""Calibration inputs for INT8 quantization, and which layers stay in float.

Images come from a folder, a list of image paths, an edgedet dataset (`.records`), a
`DataConfig`, or an already preprocessed array [N, 3, H, W]. Each image goes through the
runtime's `Preprocessor` built from the manifest's PreprocessSpec (BGR -> RGB, letterbox or
stretch, normalise), so the quantizer sees exactly the pixels deployment will.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import cv2
import numpy as np

from converters.formats import ExportError
from runtime.manifest import Manifest, PreprocessSpec
from runtime.preprocess import Preprocessor, valid_region

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Node-name fragments of layers kept in float when quantizing: deformable sampling
# offsets and attention weights (a small error moves where MSDA samples), box heads
# (errors become pixel offsets) and reference-point projections; RT-DETR's names for the same
# (box heads `*_bbox_head`, `query_pos_head`) plus its encoder score head (it picks the queries).
KEEP_FLOAT_PATTERNS = ("sampling_offsets", "attention_weights", "bbox_embed", "reference_points", "ref_point_head",
                       "bbox_head", "query_pos_head", "enc_score_head")


def preprocess_bgr(image_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 [H, W, 3] BGR -> float32 [3, h, w] network input, by the runtime's own Preprocessor."""
    return Preprocessor(spec)(image_bgr)[0][0]


def image_paths(source: Union[str, Path, Sequence[Any], Any]) -> List[Path]:
    """Image files named by `source`: a folder, a list of paths, a dataset or a DataConfig."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ExportError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {path}")
            return files
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            return [path]
        raise ExportError(f"calibration source {path} is neither an image folder nor an image file")
    if hasattr(source, "records"):
        return [Path(r.path) for r in source.records]
    if type(source).__name__ == "DataConfig":
        from edgedet.data import build_dataset

        return [Path(r.path) for r in build_dataset(source, "val").records]
    if isinstance(source, (list, tuple)) and all(isinstance(p, (str, Path)) for p in source):
        return [Path(p) for p in source]
    raise ExportError(
        f"unsupported calibration source {type(source).__name__}; pass a folder of images, a list of image paths, "
        "an edgedet dataset, a DataConfig or an array [N, 3, H, W]"
    )


def read_bgr(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ExportError(f"cannot read image {path}")
    return image


def evenly_spaced(items: Sequence[Any], limit: int) -> List[Any]:
    """At most `limit` items spread over the whole sequence (datasets are often sorted by scene)."""
    if limit <= 0 or len(items) <= limit:
        return list(items)
    idx = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in idx]


Feeds = Dict[str, np.ndarray]


def calibration_batches(source: Any, manifest: Union[Manifest, PreprocessSpec], limit: int = 32) -> List[Feeds]:
    """Preprocessed calibration inputs, one feed dict per image: the image float32 [1, 3, H, W] with
    (H, W) = the input size and, where the manifest declares one, its valid region int32 [1, 2]
    (what the runtime feeds, so the quantizer calibrates on the deployed inputs). A bare PreprocessSpec
    means a graph with the one image input `images`."""
    if isinstance(manifest, PreprocessSpec):
        manifest = Manifest(preprocess=manifest)
    spec = manifest.preprocess
    if isinstance(source, np.ndarray):
        if source.ndim != 4 or source.shape[1] != 3 or tuple(source.shape[2:]) != tuple(spec.size):
            raise ExportError(f"calibration array must be [N, 3, {spec.size[0]}, {spec.size[1]}], got {source.shape}")
        arrays = [np.ascontiguousarray(source[i : i + 1], dtype=np.float32) for i in range(min(len(source), limit))]
        # preprocessed arrays carry no letterbox: the whole input is image
        return [_feeds(manifest, x, np.array([spec.size], np.int32)) for x in arrays]
    available = image_paths(source)
    paths = evenly_spaced(available, limit)
    more = len(available) - len(paths)
    log.info("calibrating on %d of %d images%s", len(paths), len(available),
             f" ({more} more available: --calib-images {len(available)} uses them all)" if more else "")
    # recorded in the manifest: `edgedet export` says it in its last line, and the artifact keeps it
    manifest.extra["calibration"] = {"images": len(paths), "available": len(available)}
    pre = Preprocessor(spec)
    out = []
    for p in paths:
        x, infos = pre(read_bgr(p))
        out.append(_feeds(manifest, x, valid_region(infos, spec.size)))
    return out


def _feeds(manifest: Manifest, x: np.ndarray, valid_hw: np.ndarray) -> Feeds:
    feeds = {manifest.input_name: x}
    if manifest.valid_input:
        feeds[manifest.valid_input] = valid_hw
    return feeds
