"""`build_dataset(data_cfg, split)`: one reader per `data.format`, chosen through a registry.

The on-disk formats (coco, voc, yolo) are parsed by `runtime.annotations` (torch-free, shared with
the runtime's `val`, so both read a data config the same way); see `runtime.annotations.spec`
for the split names. `synthetic` is rendered here.
"""
from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path
from typing import List, Sequence, Tuple

from edgedet.config import DataConfig
from edgedet.data.records import DetectionDataset, ImageRecord
from edgedet.data.synthetic import cached_synthetic
from edgedet.data.transforms import build_transforms
from edgedet.registry import Registry
from runtime.annotations.coco import read_coco
from runtime.annotations.spec import READERS

log = logging.getLogger(__name__)

# Each reader: (data_cfg, split) -> (records, class_names, category_ids)
DATASET_FORMATS = Registry("dataset format")
Parsed = Tuple[List[ImageRecord], List[str], List[int]]
for _name, _reader in READERS.items():
    DATASET_FORMATS.register(_name)(_reader)


_ANNOUNCED: set = set()  # dataset lines already logged by this process


def synthetic_cache_root(cfg: DataConfig) -> Path:
    """`data.root` if set, else `$EDGEDET_CACHE/synthetic` (default `~/.cache/edgedet/synthetic`)."""
    if cfg.root:
        return Path(cfg.root).expanduser()
    return Path(os.environ.get("EDGEDET_CACHE", "~/.cache/edgedet")).expanduser() / "synthetic"


def _synthetic_annotations(cfg: DataConfig, split: str) -> Path:
    if split not in ("train", "val"):  # any other name would silently render a new split
        raise ValueError(f"synthetic data has the splits 'train' and 'val', not '{split}'")
    num = cfg.synthetic_train_images if split == "train" else cfg.synthetic_val_images
    # Each split gets its own seed stream, so no image of one split appears in another.
    seed = zlib.crc32(f"{split}:{cfg.synthetic_seed}".encode()) & 0x7FFFFFFF
    return cached_synthetic(synthetic_cache_root(cfg), split, num, cfg.synthetic_image_size, seed,
                            cfg.synthetic_num_classes, cfg.synthetic_max_objects, cfg.synthetic_style, cfg.synthetic_width)


@DATASET_FORMATS.register("synthetic")
def _synthetic(cfg: DataConfig, split: str) -> Parsed:
    ann = _synthetic_annotations(cfg, split)
    return read_coco(ann.parent, ann, cfg.skip_corrupt)


def synthetic_annotations(split: str = "val") -> Path:
    """`--data synthetic` for the torch-free commands (val, benchmark; the `synthetic_data` plug-in): the COCO
    JSON of the synthetic split `edgedet train --data synthetic` uses (rendered once into the cache)."""
    return _synthetic_annotations(DataConfig(format="synthetic"), split)


def build_dataset(data_cfg: DataConfig, split: str) -> DetectionDataset:
    """Dataset of `split` with the train transforms for "train" and the deterministic val ones otherwise."""
    reader = DATASET_FORMATS.get(data_cfg.format)
    records, class_names, category_ids = reader(data_cfg, split)
    if not records:
        raise ValueError(f"{data_cfg.format} dataset split '{split}' (root '{data_cfg.root}') holds no usable images")
    n_boxes = sum(len(r.labels) for r in records)
    line = f"data {data_cfg.format}:{split}: {len(records)} images, {n_boxes} boxes, {len(class_names)} classes"
    # One export or training reads a split several times (threshold, calibration, verify): said once.
    log.log(logging.DEBUG if line in _ANNOUNCED else logging.INFO, "%s", line)
    _ANNOUNCED.add(line)
    return DetectionDataset(records, class_names, category_ids, build_transforms(data_cfg, split == "train"),
                            name=f"{data_cfg.format}:{split}")


def list_formats() -> Sequence[str]:
    return DATASET_FORMATS.names()
