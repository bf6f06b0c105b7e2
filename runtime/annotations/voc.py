"""Pascal VOC reader: `Annotations/*.xml` + `ImageSets/Main/<split>.txt` + `JPEGImages/`.

VOC corners are 1-based inclusive pixel indices, so (xmin, ymin, xmax, ymax) becomes the
continuous box (xmin - 1, ymin - 1, xmax, ymax); a box with xmax <= xmin or ymax <= ymin in the
file is an annotation slip and is dropped as degenerate.
"""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from runtime.annotations.common import (IMAGE_SUFFIXES, BadFilePolicy, DataFormatError, DegenerateCounter, ImageRecord,
                                        clean_boxes, image_size)
from runtime.annotations.splits import read_split_ids

logger = logging.getLogger(__name__)


def _parse_xml(xml_path: Path) -> Tuple[Optional[Tuple[int, int]], List[Tuple[str, Tuple[float, ...], bool]]]:
    """-> ((width, height) or None, [(name, (xmin, ymin, xmax, ymax), difficult)])."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as e:
        raise DataFormatError(f"malformed VOC XML {xml_path}: {e}") from None
    size = None
    size_el = root.find("size")
    objects = []
    try:
        if size_el is not None and size_el.findtext("width") and size_el.findtext("height"):
            size = (int(float(size_el.findtext("width"))), int(float(size_el.findtext("height"))))
        for i, obj in enumerate(root.iter("object")):
            name = (obj.findtext("name") or "").strip()
            box_el = obj.find("bndbox")
            if not name or box_el is None:
                raise ValueError(f"object {i} needs <name> and <bndbox>")
            box = tuple(float(box_el.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            difficult = (obj.findtext("difficult") or "0").strip() == "1"
            objects.append((name, box, difficult))
    except (TypeError, ValueError) as e:  # float(None) for a missing corner, text that is not a number
        raise DataFormatError(f"malformed VOC XML {xml_path}: {e}") from None
    return size, objects


def voc_class_names(root: Union[str, Path], annotations: str = "Annotations") -> List[str]:
    """Sorted object names found in every parseable XML under `root/<annotations>` (all splits agree)."""
    files: Dict[str, List[Path]] = {}
    xml_paths = sorted((Path(root) / annotations).glob("*.xml"))
    for xml_path in xml_paths:
        try:
            for name in {name for name, _, _ in _parse_xml(xml_path)[1]}:
                files.setdefault(name, []).append(xml_path)
        except DataFormatError:
            continue  # reported when the file is read as part of a split
    report_rare_classes(files, len(xml_paths))
    return sorted(files)


def report_rare_classes(files: Dict[str, List[Path]], total_files: int) -> None:
    """A class named in a single file of a larger dataset is most often a typo ('dgo'): say where."""
    if total_files < 10 or len(files) < 2:
        return
    for name, where in sorted(files.items()):
        if len(where) == 1:
            logger.warning("class '%s' appears only in %s (1 of %d annotation files): a misspelt name adds a class; "
                           "fix the file or set data.class_names to the intended list", name, where[0], total_files)


def _find_image(images_dir: Path, stem: str, filename: str) -> Path:
    if filename and (images_dir / filename).exists():
        return images_dir / filename
    for suffix in IMAGE_SUFFIXES:
        if (images_dir / (stem + suffix)).exists():
            return images_dir / (stem + suffix)
    return images_dir / (filename or stem + ".jpg")  # image_size() reports it as missing


def read_voc(
    root: Union[str, Path],
    split_file: Union[str, Path],
    class_names: Optional[Sequence[str]] = None,
    keep_difficult: bool = False,
    skip_corrupt: bool = False,
    annotations: str = "Annotations",
    images: str = "JPEGImages",
    stems: Optional[Sequence[str]] = None,
) -> Tuple[List[ImageRecord], List[str], List[int]]:
    """-> (records, class_names, category_ids = label + 1); image_id = 1-based line order in the split.

    `class_names` fixes the label order; by default the sorted names found in the data.
    Objects whose name is not in `class_names` make the file malformed. `stems` (image ids) replaces
    the split file when given; `annotations`/`images` name the folders under `root`.
    """
    root = Path(root)
    split_file = Path(split_file)
    for sub, key in ((annotations, "voc_annotations"), (images, "voc_images")):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"VOC folder {root / sub} not found (expected {root}/{annotations} and {root}/{images}; "
                                    f"other folder names: set data.{key})")
    if stems is None:
        stems = read_split_ids(split_file)
    names = list(class_names) if class_names else voc_class_names(root, annotations)
    label_of = {n: i for i, n in enumerate(names)}

    policy = BadFilePolicy(skip_corrupt, str(split_file))
    degenerate = DegenerateCounter(str(split_file))
    records: List[ImageRecord] = []
    for index, stem in enumerate(tqdm(stems, desc=f"reading {split_file.name}", disable=None, leave=False)):
        xml_path = root / annotations / f"{stem}.xml"
        try:
            if not xml_path.is_file():
                raise DataFormatError(f"VOC annotation missing: {xml_path} (listed in {split_file})")
            xml_size, objects = _parse_xml(xml_path)
            unknown = [n for n, _, _ in objects if n not in label_of]
            if unknown:
                raise DataFormatError(f"{xml_path}: class '{unknown[0]}' is not one of {names}")
            path = _find_image(root / images, stem, "")
            width, height = image_size(path, decode=policy.skip)
        except DataFormatError as e:
            policy.handle(e)
            continue
        if xml_size and xml_size != (width, height):
            logger.warning("%s: <size> %s differs from the image %s; using the image", xml_path, xml_size, (width, height))
        kept = [(n, b) for n, b, difficult in objects if keep_difficult or not difficult]
        raw = np.array([b for _, b in kept], np.float32).reshape(-1, 4)
        boxes = raw.copy()
        boxes[:, :2] -= 1.0
        flat = (raw[:, 2] <= raw[:, 0]) | (raw[:, 3] <= raw[:, 1])
        boxes[flat, 2:] = boxes[flat, :2]  # zero area -> dropped (and counted) by clean_boxes
        labels = np.array([label_of[n] for n, _ in kept], np.int64)
        boxes, labels = clean_boxes(boxes, labels, width, height, degenerate)
        records.append(ImageRecord(index + 1, path, width, height, boxes, labels))
    policy.report()
    degenerate.report()
    return records, names, list(range(1, len(names) + 1))
