"""YOLO reader: `images/.../x.jpg` with `labels/.../x.txt` lines `class cx cy w h` (normalised).

Split layout, first match wins: an explicit list file or folder (`data.train_ann`/`val_ann`),
the split's entry in `root/data.yaml`, `root/images/<split>/`, `root/<split>/images/`.
Class names: `data.class_names`, else `root/classes.txt` (one per line), else `data.yaml` `names`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from runtime.annotations.common import (IMAGE_SUFFIXES, BadFilePolicy, DataFormatError, DegenerateCounter, ImageRecord,
                                        clean_boxes, image_size, read_yaml)

_COORD_TOL = 1e-3  # exporters round; values a hair outside [0, 1] are clipped, not rejected
DATA_YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml")
# An Ultralytics data.yaml holds only these keys (Roboflow exports add their `roboflow:` block).
ULTRALYTICS_KEYS = {"path", "train", "val", "test", "names", "nc", "download", "roboflow"}


def data_yaml_path(root: Path) -> Optional[Path]:
    return next((root / n for n in DATA_YAML_NAMES if (root / n).is_file()), None)


def _data_yaml(root: Path) -> Dict:
    p = data_yaml_path(root)
    if p is None:
        return {}
    raw = read_yaml(p) or {}
    if not isinstance(raw, dict):
        raise DataFormatError(f"{p}: expected a mapping (path, train, val, names), got {type(raw).__name__}")
    return raw


def names_list(names: Any, where: Union[str, Path], nc: Any = None) -> List[str]:
    """Class names from a data.yaml `names` entry: a list, or a mapping {id: name} whose ids are
    exactly 0..N-1 (label files use the ids as class indices, so a gap would silently shift classes)."""
    if isinstance(names, str):
        raise DataFormatError(f"{where}: 'names' is the single string '{names}', not a list; write names: [{names}]")
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataFormatError(f"{where}: 'names' keys must be class ids 0..N-1, got {list(names)}") from None
        if ids != list(range(len(ids))):
            raise DataFormatError(f"{where}: 'names' ids {ids} are not 0..{len(ids) - 1}; label files use the ids as class "
                                  "indices, so name every id from 0 (a placeholder name for unused ones) or renumber the labels")
        by_id = {int(k): v for k, v in names.items()}
        names = [by_id[i] for i in ids]
    if not isinstance(names, (list, tuple)) or not names:
        raise DataFormatError(f"{where}: 'names' must be a non-empty list of class names (or a mapping id: name), got {names!r}")
    out = [str(n) for n in names]
    if nc is not None and nc != len(out):
        raise DataFormatError(f"{where}: 'nc' is {nc} but 'names' has {len(out)} entries; make them agree")
    return out


def is_ultralytics_data_yaml(raw: Dict[str, Any]) -> bool:
    """Ultralytics' dataset layout: `names` plus `train`/`val` image sources, and none of our own keys."""
    return "names" in raw and ("train" in raw or "val" in raw) and set(raw) <= ULTRALYTICS_KEYS \
        and not isinstance(raw.get("train"), dict)


def ultralytics_section(raw: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """The edgedet data-config keys (format yolo, root, *_ann, class_names) of an Ultralytics data.yaml."""
    names = names_list(raw["names"], path, raw.get("nc"))
    for key in ("train", "val", "test"):
        if isinstance(raw.get(key), list):
            raise DataFormatError(f"{path}: '{key}' lists several sources; edgedet reads one folder or list file per split "
                                  "(merge them into a .txt list of image paths)")
    root = Path(str(raw.get("path") or ".")).expanduser()
    root = root if root.is_absolute() else path.parent / root
    return {"format": "yolo", "root": str(root), "train_ann": str(raw.get("train") or ""),
            "val_ann": str(raw.get("val") or ""), "test_ann": str(raw.get("test") or ""), "class_names": names}


def yolo_class_names(root: Path) -> List[str]:
    classes_txt = root / "classes.txt"
    if classes_txt.is_file():
        return [line.strip() for line in classes_txt.read_text().splitlines() if line.strip()]
    raw = _data_yaml(root)
    if raw.get("names") is not None:
        return names_list(raw["names"], data_yaml_path(root), raw.get("nc"))
    raise FileNotFoundError(f"no YOLO class names: write {classes_txt} (one name per line), a data.yaml 'names' list, or set data.class_names")


def _images_in(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _resolve_images(root: Path, split: str, source: str) -> List[Path]:
    """Image paths of one split (see the module docstring for the lookup order)."""
    if not source:
        raw = _data_yaml(root)
        if isinstance(raw.get(split), str):
            base = Path(str(raw.get("path") or ".")).expanduser()
            source = str((base if base.is_absolute() else root / base) / raw[split])
    if source:
        p = Path(source).expanduser()
        p = p if p.is_absolute() or p.exists() else root / p
        if p.is_dir():
            return _images_in(p)
        if p.is_file():
            lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
            return [q if q.is_absolute() else (p.parent / q if (p.parent / q).exists() else root / q) for q in map(Path, lines)]
        raise FileNotFoundError(f"YOLO split '{split}' source not found: {p} (a folder of images or a list file)")
    for folder in (root / "images" / split, root / split / "images"):
        if folder.is_dir():
            return _images_in(folder)
    raise FileNotFoundError(
        f"YOLO split '{split}' not found under {root}: expected {root}/images/{split}/ or {root}/{split}/images/, "
        f"a '{split}:' entry in data.yaml, or data.{split}_ann naming a list file or folder"
    )


def label_path(image_path: Path) -> Path:
    """`.../images/a/b.jpg` -> `.../labels/a/b.txt` (the last `images` component is swapped)."""
    parts = list(image_path.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image_path.with_suffix(".txt")


def parse_label_file(path: Path, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """-> (cxcywh normalised float32 [n, 4], labels int64 [n]); a bad line raises naming file and line."""
    rows, labels = [], []
    if not path.is_file():
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)  # no label file: a background image
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise DataFormatError(f"malformed YOLO label {path}: not a text file of 'class cx cy w h' lines") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{path}:{lineno}"
        if len(tokens) != 5:
            raise DataFormatError(f"malformed YOLO label {where}: expected 'class cx cy w h', got {len(tokens)} values")
        try:
            cls = int(tokens[0])
            vals = [float(t) for t in tokens[1:]]
        except ValueError:
            raise DataFormatError(f"malformed YOLO label {where}: '{line.strip()}' is not 'int float float float float'") from None
        if not 0 <= cls < num_classes:
            raise DataFormatError(f"malformed YOLO label {where}: class {cls} outside 0..{num_classes - 1}")
        if not all(-_COORD_TOL <= v <= 1 + _COORD_TOL for v in vals) or not np.all(np.isfinite(vals)):
            raise DataFormatError(f"malformed YOLO label {where}: coordinates must be normalised to [0, 1], got {vals}")
        rows.append(vals)
        labels.append(cls)
    return np.array(rows, np.float32).reshape(-1, 4), np.array(labels, np.int64)


def read_yolo(
    root: Union[str, Path],
    split: str,
    source: str = "",
    class_names: Optional[Sequence[str]] = None,
    skip_corrupt: bool = False,
) -> Tuple[List[ImageRecord], List[str], List[int]]:
    """-> (records, class_names, category_ids = label + 1); image_id = 1-based order of the images."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"YOLO dataset folder not found: {root} (expected images/ and labels/ inside)")
    names = list(class_names) if class_names else yolo_class_names(root)
    images = _resolve_images(root, split, source)
    policy = BadFilePolicy(skip_corrupt, f"{root} ({split})")
    degenerate = DegenerateCounter(f"{root} ({split})")
    records: List[ImageRecord] = []
    for index, path in enumerate(tqdm(images, desc=f"reading YOLO {split}", disable=None, leave=False)):
        try:
            width, height = image_size(path, decode=policy.skip)
            cxcywh, labels = parse_label_file(label_path(path), len(names))
        except DataFormatError as e:
            policy.handle(e)
            continue
        cx, cy, w, h = (cxcywh[:, i] for i in range(4))
        boxes = np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], axis=1)
        boxes, labels = clean_boxes(boxes, labels, width, height, degenerate)
        records.append(ImageRecord(index + 1, path, width, height, boxes, labels))
    policy.report()
    degenerate.report()
    return records, names, list(range(1, len(names) + 1))
