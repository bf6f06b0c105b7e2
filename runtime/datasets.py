"""Torch-free reading of labelled datasets for `val`, `benchmark --data` and `predict --data`.

`--data` may be: a COCO instances JSON (images beside it or in `images/`), a VOC folder
(Annotations/, JPEGImages/, ImageSets/Main/<split>.txt or .csv), a YOLO folder or its data.yaml, or
any data YAML `edgedet train` accepts (the `data:` section or its keys: format, root, *_ann,
voc_*, val_fraction, ...; or an Ultralytics data.yaml). All of them are parsed by
`runtime.annotations`, the same readers and rules `edgedet train` uses.
Labels are contiguous 0..C-1 in `class_names` order; `category_ids[label]` is the COCO id.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Union

import numpy as np

from runtime.annotations.coco import read_coco
from runtime.annotations.common import DatasetError, ImageRecord, read_yaml
from runtime.annotations.spec import DataSpec, data_section_from_yaml, read_split
from runtime.annotations.yolo import data_yaml_path, is_ultralytics_data_yaml

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    records: List[ImageRecord]
    class_names: List[str]
    category_ids: List[int]
    description: str

    def __len__(self) -> int:
        return len(self.records)

    def by_file_name(self) -> Dict[str, ImageRecord]:
        return {r.path.name: r for r in self.records}

    def aligned_to(self, model_names: Sequence[str]) -> "Dataset":
        """This dataset with labels in the model's class order; DatasetError naming what differs."""
        model_names = list(model_names)
        if not model_names or model_names == self.class_names:
            return self
        if sorted(model_names) != sorted(self.class_names):
            missing = [n for n in self.class_names if n not in model_names]
            extra = [n for n in model_names if n not in self.class_names]
            raise DatasetError(f"the data's classes {self.class_names} do not match the model's {model_names} "
                               f"(data only: {missing or 'none'}; model only: {extra or 'none'}); "
                               "pass data whose classes are the model's, or set class_names in the data config")
        remap = np.array([model_names.index(n) for n in self.class_names], np.int64)
        records = [ImageRecord(r.image_id, r.path, r.width, r.height, r.boxes_xyxy, remap[r.labels]) for r in self.records]
        ids = dict(zip(self.class_names, self.category_ids))
        return Dataset(records, model_names, [ids[n] for n in model_names], self.description)


def _spec_of(path: Path) -> DataSpec:
    """The data config `--data PATH` stands for (a folder or a YAML)."""
    if path.is_dir():
        if (path / "Annotations").is_dir():
            return DataSpec(format="voc", root=str(path))
        yml = data_yaml_path(path)
        raw = read_yaml(yml) if yml is not None else None
        if isinstance(raw, dict) and is_ultralytics_data_yaml(raw):
            return _spec_of(yml)
        if yml is not None:  # a YOLO folder whose data.yaml only names the classes: images/<split>/ inside
            return DataSpec(format="yolo", root=str(path))
        raise DatasetError(f"{path} is neither a VOC folder (Annotations/) nor a YOLO folder (data.yaml): pass a dataset or its YAML")
    if path.suffix.lower() in (".yaml", ".yml"):
        section = data_section_from_yaml(path, allow_sections=True)
        if "format" not in section:
            raise DatasetError(f"{path} names no data format: add 'format: coco', 'voc' or 'yolo' (and 'root'), "
                               "or pass an Ultralytics data.yaml (path, train, val, names)")
        return DataSpec.from_section(section, f"{path}: data")
    raise DatasetError(f"cannot read a dataset from {path.name}: pass a COCO .json, a data .yaml, or a VOC/YOLO folder")


def synthetic_split(split: str) -> Path:
    """`--data synthetic`: the training stack renders the split (cached) -> its COCO JSON. The runtime itself
    stays torch-free: the renderer comes through the `synthetic_data` plug-in of the training extra."""
    from runtime.models import plugin

    render = plugin("synthetic_data", "--data synthetic renders its images with the training extra "
                    "(or pass a dataset on disk: a COCO JSON, a VOC or YOLO folder, a data YAML)", "train")
    return Path(render(split))


def load_dataset(data: Union[str, Path], split: str = "val") -> Dataset:
    """Read `split` of the dataset `data` names (see the module docstring for what it may be; also
    'synthetic', the generated shapes `edgedet train --data synthetic` uses, splits train and val)."""
    if str(data) == "synthetic" and not Path("synthetic").exists():
        data = synthetic_split(split)
    path = Path(data).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {data} (a COCO JSON, a VOC or YOLO folder, or a data YAML)")
    if path.is_file() and path.suffix.lower() == ".json":  # one COCO JSON is one split
        records, names, ids = read_coco(None, path)
        description = f"COCO {path}"
    else:
        spec = _spec_of(path)
        if spec.format == "synthetic":
            raise DatasetError(f"{path}: format 'synthetic' in a data YAML is for `edgedet train`/`eval`; pass --data synthetic "
                               "for the default synthetic split, or a dataset on disk (coco, voc, yolo)")
        records, names, ids = read_split(spec, split)
        description = f"{spec.format.upper()} {spec.root} split '{split}'"
    if not records:
        raise DatasetError(f"{description} holds no usable images")
    log.debug("%s: %d images", description, len(records))
    return Dataset(records, names, ids, description)


__all__ = ["Dataset", "DatasetError", "ImageRecord", "load_dataset"]
