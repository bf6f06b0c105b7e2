"""`build_dataset(data_cfg, split)`: one reader per `data.format`, chosen through a registry.

Split names: "train" and "val" use the config's train_*/val_* fields; any other name (for
example "test" or "trainval") is used as the split itself where the format has named splits.
"""
from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path
from typing import List, Sequence, Tuple

from edgedet.config import DataConfig
from edgedet.data.coco import read_coco
from edgedet.data.io import resolve_path
from edgedet.data.records import DetectionDataset, ImageRecord
from edgedet.data.synthetic import cached_synthetic
from edgedet.data.transforms import build_transforms
from edgedet.data.voc import holdout_split, read_split_ids, read_voc
from edgedet.data.yolo import read_yolo
from edgedet.registry import Registry

log = logging.getLogger(__name__)

# Each reader: (data_cfg, split) -> (records, class_names, category_ids)
DATASET_FORMATS = Registry("dataset format")
Parsed = Tuple[List[ImageRecord], List[str], List[int]]


def _split_fields(cfg: DataConfig, split: str) -> Tuple[str, str]:
    """(annotation/list path or "", split name) for `split`."""
    if split == "train":
        return cfg.train_ann, cfg.train_split
    if split == "val":
        return cfg.val_ann, cfg.val_split
    return "", split


def _root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise FileNotFoundError(f"data.root is empty: set it to the {cfg.format} dataset folder")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root} (data.root, format {cfg.format})")
    return root


@DATASET_FORMATS.register("coco")
def _coco(cfg: DataConfig, split: str) -> Parsed:
    ann, split_dir = _split_fields(cfg, split)
    if split not in ("train", "val"):
        raise ValueError(f"COCO datasets have the splits 'train' and 'val' (data.train_ann / data.val_ann), not '{split}'")
    if not ann:
        raise FileNotFoundError(f"no COCO annotation file for '{split}': set data.{split}_ann to an instances JSON")
    root = _root(cfg)
    return read_coco(root, resolve_path(ann, root), cfg.skip_corrupt, split_dir)


@DATASET_FORMATS.register("voc")
def _voc(cfg: DataConfig, split: str) -> Parsed:
    ann, name = _split_fields(cfg, split)
    root = _root(cfg)
    folder = root / cfg.voc_splits
    candidates = [resolve_path(ann, root)] if ann else [folder / f"{name}.txt", folder / f"{name}.csv", folder / "splits.csv"]
    split_file = next((p for p in candidates if p.is_file()), candidates[0])
    stems = None
    if split_file.is_file():
        stems = read_split_ids(split_file, name)
    elif cfg.val_fraction > 0:  # no split files: a seeded hold-out of every annotated image
        ids = [p.stem for p in (root / cfg.voc_annotations).glob("*.xml")]
        stems = holdout_split(ids, split, cfg.val_fraction, cfg.split_seed)
    return read_voc(root, split_file, cfg.class_names or None, cfg.keep_difficult, cfg.skip_corrupt,
                    cfg.voc_annotations, cfg.voc_images, stems)


@DATASET_FORMATS.register("yolo")
def _yolo(cfg: DataConfig, split: str) -> Parsed:
    ann, name = _split_fields(cfg, split)
    return read_yolo(_root(cfg), name, ann, cfg.class_names or None, cfg.skip_corrupt)


def synthetic_cache_root(cfg: DataConfig) -> Path:
    """`data.root` if set, else `$EDGEDET_CACHE/synthetic` (default `~/.cache/edgedet/synthetic`)."""
    if cfg.root:
        return Path(cfg.root).expanduser()
    return Path(os.environ.get("EDGEDET_CACHE", "~/.cache/edgedet")).expanduser() / "synthetic"


@DATASET_FORMATS.register("synthetic")
def _synthetic(cfg: DataConfig, split: str) -> Parsed:
    if split not in ("train", "val"):  # any other name would silently render a new split
        raise ValueError(f"synthetic data has the splits 'train' and 'val', not '{split}'")
    num = cfg.synthetic_train_images if split == "train" else cfg.synthetic_val_images
    # Each split gets its own seed stream, so no image of one split appears in another.
    seed = zlib.crc32(f"{split}:{cfg.synthetic_seed}".encode()) & 0x7FFFFFFF
    ann = cached_synthetic(synthetic_cache_root(cfg), split, num, cfg.synthetic_image_size, seed,
                           cfg.synthetic_num_classes, cfg.synthetic_max_objects, cfg.synthetic_style, cfg.synthetic_width)
    return read_coco(ann.parent, ann, cfg.skip_corrupt)


def build_dataset(data_cfg: DataConfig, split: str) -> DetectionDataset:
    """Dataset of `split` with the train transforms for "train" and the deterministic val ones otherwise."""
    reader = DATASET_FORMATS.get(data_cfg.format)
    records, class_names, category_ids = reader(data_cfg, split)
    if not records:
        raise ValueError(f"{data_cfg.format} dataset split '{split}' (root '{data_cfg.root}') holds no usable images")
    n_boxes = sum(len(r.labels) for r in records)
    log.info("data %s:%s: %d images, %d boxes, %d classes", data_cfg.format, split, len(records), n_boxes, len(class_names))
    return DetectionDataset(records, class_names, category_ids, build_transforms(data_cfg, split == "train"),
                            name=f"{data_cfg.format}:{split}")


def list_formats() -> Sequence[str]:
    return DATASET_FORMATS.names()
