"""Torch-free reading of labelled datasets for `val` and `predict --data`: COCO, VOC and YOLO.

`--data` may be: a COCO instances JSON (images beside it or in `images/`), a VOC folder
(Annotations/, JPEGImages/, ImageSets/Main/<split>.txt), a YOLO folder or its data.yaml, or
an edgedet data config YAML (the `data:` section `edgedet train` reads: format, root, *_ann).
Labels are contiguous 0..C-1 in `class_names` order; `category_ids[label]` is the COCO id.
VOC corners follow `edgedet.data.voc` (1-based pixels: xmin/ymin minus 1; difficult objects dropped).
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import yaml

from runtime.capture import IMAGE_SUFFIXES


class DatasetError(ValueError):
    """A dataset that cannot be read as given; the message says what to fix."""


@dataclass
class Sample:
    """One image: boxes xyxy pixels (or cxcywh normalised until `resolve(h, w)` when `normalized`)."""

    image_id: int
    path: Path
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    normalized: bool = False

    def boxes_xyxy(self, height: int, width: int) -> np.ndarray:
        b = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        if not self.normalized:
            return b
        cx, cy, w, h = (b[:, i] for i in range(4))
        return np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], 1)


@dataclass
class Dataset:
    samples: List[Sample]
    class_names: List[str]
    category_ids: List[int]
    description: str

    def __len__(self) -> int:
        return len(self.samples)

    def by_file_name(self) -> Dict[str, Sample]:
        return {s.path.name: s for s in self.samples}

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
        samples = [Sample(s.image_id, s.path, s.boxes, remap[s.labels], s.normalized) for s in self.samples]
        ids = dict(zip(self.class_names, self.category_ids))
        return Dataset(samples, model_names, [ids[n] for n in model_names], self.description)


def _coco(ann_file: Path, images_root: Optional[Path] = None) -> Dataset:
    try:
        data = json.loads(ann_file.read_text())
        cats = sorted(data["categories"], key=lambda c: int(c["id"]))
        images, anns = data["images"], data["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{ann_file} is not a COCO instances JSON (needs images, annotations, categories): {e}") from None
    ids = [int(c["id"]) for c in cats]
    label_of = {cid: i for i, cid in enumerate(ids)}
    roots = ([images_root] if images_root else []) + [ann_file.parent, ann_file.parent / "images", ann_file.parent.parent / "images"]
    first = images[0]["file_name"] if images else ""
    root = next((r for r in roots if r is not None and (r / first).is_file()), roots[0])
    by_image: Dict[int, list] = {}
    for a in anns:
        if not a.get("iscrowd", 0):
            by_image.setdefault(int(a["image_id"]), []).append(a)
    samples = []
    for im in images:
        objs = by_image.get(int(im["id"]), [])
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in objs],
                         np.float32).reshape(-1, 4)
        labels = np.array([label_of[int(a["category_id"])] for a in objs], np.int64)
        samples.append(Sample(int(im["id"]), root / im["file_name"], boxes, labels))
    return Dataset(samples, [str(c["name"]) for c in cats], ids, f"COCO {ann_file}")


def _voc_objects(xml_path: Path):
    root = ET.parse(xml_path).getroot()
    for obj in root.iter("object"):
        if (obj.findtext("difficult") or "0").strip() == "1":
            continue
        box = obj.find("bndbox")
        yield (obj.findtext("name") or "").strip(), [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]


def _voc(root: Path, split: str, class_names: Optional[Sequence[str]]) -> Dataset:
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        have = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt")) if (root / "ImageSets" / "Main").is_dir() else []
        raise DatasetError(f"VOC split '{split}' not found: {split_file} is missing; splits here: {have or 'none'} (pass --split)")
    stems = [ln.split()[0] for ln in split_file.read_text().splitlines() if ln.strip()]
    parsed = {s: list(_voc_objects(root / "Annotations" / f"{s}.xml")) for s in stems}
    names = list(class_names) if class_names else sorted({
        n for x in (root / "Annotations").glob("*.xml") for n, _ in _voc_objects(x)})
    label_of = {n: i for i, n in enumerate(names)}
    samples = []
    for i, stem in enumerate(stems):
        path = next((root / "JPEGImages" / (stem + s) for s in IMAGE_SUFFIXES if (root / "JPEGImages" / (stem + s)).is_file()),
                    root / "JPEGImages" / f"{stem}.jpg")
        objs = [(n, b) for n, b in parsed[stem] if n in label_of]
        boxes = np.array([[b[0] - 1, b[1] - 1, b[2], b[3]] for _, b in objs], np.float32).reshape(-1, 4)
        samples.append(Sample(i + 1, path, boxes, np.array([label_of[n] for n, _ in objs], np.int64)))
    return Dataset(samples, names, [i + 1 for i in range(len(names))], f"VOC {root} split '{split}'")


def _yolo(root: Path, spec: dict, split: str, class_names: Optional[Sequence[str]]) -> Dataset:
    names = spec.get("names") if not class_names else list(class_names)
    if isinstance(names, dict):
        names = [str(names[k]) for k in sorted(names, key=int)]
    if not names:
        raise DatasetError(f"no class names for the YOLO dataset at {root}: add a 'names' list to its data.yaml")
    entry = spec.get(split)
    if entry is None:
        keys = [k for k in ("train", "val", "test") if k in spec]
        raise DatasetError(f"YOLO split '{split}' is not in the data.yaml of {root}; it has: {keys or 'none'} (pass --split)")
    folder = Path(spec.get("path") or root)
    folder = folder if folder.is_absolute() else root / folder
    src = folder / entry
    if src.is_file():
        paths = [Path(ln.strip()) for ln in src.read_text().splitlines() if ln.strip()]
        paths = [p if p.is_absolute() else folder / p for p in paths]
    elif src.is_dir():
        paths = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise DatasetError(f"YOLO split '{split}' source not found: {src}")
    samples = []
    for i, p in enumerate(paths):
        parts = list(p.parts)
        idx = max((k for k, part in enumerate(parts[:-1]) if part == "images"), default=None)
        lab = Path(*parts[:idx], "labels", *parts[idx + 1:]).with_suffix(".txt") if idx is not None else p.with_suffix(".txt")
        rows = np.array([[float(v) for v in ln.split()] for ln in (lab.read_text().splitlines() if lab.is_file() else []) if ln.strip()],
                        np.float32).reshape(-1, 5)
        samples.append(Sample(i + 1, p, rows[:, 1:], rows[:, 0].astype(np.int64), normalized=True))
    return Dataset(samples, [str(n) for n in names], [i + 1 for i in range(len(names))], f"YOLO {root} split '{split}'")


def load_dataset(data: Union[str, Path], split: str = "val") -> Dataset:
    """Read `split` of the dataset `data` names (see the module docstring for what it may be)."""
    path = Path(data).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {data} (a COCO JSON, a VOC or YOLO folder, or a data YAML)")
    if path.is_dir():
        if (path / "Annotations").is_dir():
            ds = _voc(path, split, None)
        elif any((path / n).is_file() for n in ("data.yaml", "data.yml", "dataset.yaml")):
            yml = next(path / n for n in ("data.yaml", "data.yml", "dataset.yaml") if (path / n).is_file())
            ds = _yolo(path, yaml.safe_load(yml.read_text()) or {}, split, None)
        else:
            raise DatasetError(f"{data} is neither a VOC folder (Annotations/) nor a YOLO folder (data.yaml): pass a dataset or its YAML")
    elif path.suffix.lower() == ".json":
        ds = _coco(path)
    elif path.suffix.lower() in (".yaml", ".yml"):
        raw = yaml.safe_load(path.read_text()) or {}
        cfg = raw["data"] if isinstance(raw.get("data"), dict) else raw
        if "names" in cfg and "format" not in cfg:  # an Ultralytics-style data.yaml
            ds = _yolo(path.parent, cfg, split, None)
        else:
            ds = _from_config(cfg, path.parent, split)
    else:
        raise DatasetError(f"cannot read a dataset from {path.name}: pass a COCO .json, a data .yaml, or a VOC/YOLO folder")
    if not ds.samples:
        raise DatasetError(f"{ds.description} holds no images")
    return ds


def _from_config(cfg: dict, base: Path, split: str) -> Dataset:
    fmt = cfg.get("format", "")

    def rel(v: str) -> Path:
        p = Path(v).expanduser()
        return p if p.is_absolute() or p.exists() else base / p

    if fmt == "synthetic" or not fmt:
        raise DatasetError("the runtime scores datasets on disk (coco, voc, yolo); for 'synthetic' use `edgedet eval` or write it out")
    root = rel(cfg.get("root", "")) if cfg.get("root") else None
    if root is None or not root.is_dir():
        raise FileNotFoundError(f"data.root not found: {cfg.get('root')!r} (format {fmt})")
    names = cfg.get("class_names") or None
    ann_key = {"train": "train_ann", "val": "val_ann"}.get(split)
    ann = cfg.get(ann_key, "") if ann_key else ""
    if fmt == "coco":
        if not ann:
            raise DatasetError(f"no COCO annotation file for split '{split}': set data.{split}_ann (COCO configs have train and val)")
        return _coco(root / ann if (root / ann).is_file() else rel(ann), root)
    if fmt == "voc":
        name = cfg.get(f"{split}_split", split) if split in ("train", "val") else split
        return _voc(root, name, names)
    if fmt == "yolo":
        spec = yaml.safe_load(next((root / n).read_text() for n in ("data.yaml", "data.yml") if (root / n).is_file())) \
            if any((root / n).is_file() for n in ("data.yaml", "data.yml")) else {}
        if split not in spec:
            spec[split] = f"images/{split}"
        return _yolo(root, spec, split, names or spec.get("names"))
    raise DatasetError(f"unknown data format '{fmt}'; valid: coco, voc, yolo")


__all__ = ["Dataset", "DatasetError", "Sample", "load_dataset"]
