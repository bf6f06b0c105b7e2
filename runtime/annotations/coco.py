"""COCO JSON reader: category ids -> contiguous labels, crowd boxes dropped, bbox xywh -> xyxy."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from tqdm import tqdm

from runtime.annotations.common import BadFilePolicy, DataFormatError, DegenerateCounter, ImageRecord, clean_boxes, image_size


def _load_json(ann_file: Path) -> dict:
    if not ann_file.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {ann_file} (expected a COCO instances JSON)")
    try:
        data = json.loads(ann_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(f"malformed COCO JSON {ann_file}: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataFormatError(f"malformed COCO JSON {ann_file}: needs 'images', 'annotations' and 'categories' lists")
    return data


def _check_ids(data: dict, ann_file: Path) -> None:
    """Refuse what would give an image another image's boxes: an image id used twice, one file listed
    under two ids, and annotations of an image id the file does not list."""
    ids, files = {}, {}
    for img in data["images"]:
        if isinstance(img, dict) and "id" in img and "file_name" in img:
            ids.setdefault(str(img["id"]), []).append(str(img["file_name"]))
            files.setdefault(str(img["file_name"]), []).append(str(img["id"]))
    twice = next(((i, f) for i, f in ids.items() if len(f) > 1), None)
    if twice:
        raise DataFormatError(f"{ann_file}: image id {twice[0]} is given to {len(twice[1])} images ({', '.join(twice[1][:3])}); "
                              "each image needs its own id (renumber them)")
    listed = next(((f, i) for f, i in files.items() if len(i) > 1), None)
    if listed:
        raise DataFormatError(f"{ann_file}: file {listed[0]} is listed under image ids {', '.join(listed[1][:3])}; "
                              "list each file once and point all its annotations at that id")
    missing = Counter(str(a["image_id"]) for a in data["annotations"]  # one without an image_id: malformed, reported below
                      if isinstance(a, dict) and "image_id" in a and str(a["image_id"]) not in ids)
    if missing:
        first = sorted(missing)[:3]
        raise DataFormatError(f"{ann_file}: {sum(missing.values())} annotation(s) point at image id(s) not in 'images' "
                              f"(e.g. {', '.join(first)}); add those images or remove the annotations")


def _images_dir(images_root: Path, split_dir: str, first_file: str) -> Path:
    """The folder the JSON's file_name values are relative to: `root` or `root/<split_dir>`."""
    if not images_root.is_dir():
        raise FileNotFoundError(f"COCO images folder not found: {images_root} (set data.root to the images folder)")
    if first_file and not (images_root / first_file).exists() and split_dir and (images_root / split_dir / first_file).exists():
        return images_root / split_dir
    return images_root


def find_images_root(ann_file: Path, first_file: str) -> Path:
    """For a bare COCO JSON (no data.root): the folder beside it, or an images/ folder near it, that holds its first file."""
    roots = [ann_file.parent, ann_file.parent / "images", ann_file.parent.parent / "images"]
    return next((r for r in roots if (r / first_file).is_file()), roots[0])


def read_coco(
    images_root: Optional[Union[str, Path]], ann_file: Union[str, Path], skip_corrupt: bool = False, split_dir: str = ""
) -> Tuple[List[ImageRecord], List[str], List[int]]:
    """-> (records, class_names, category_ids); labels follow the categories sorted by id.

    Images without annotations are kept (background images). A malformed annotation or
    corrupt image raises `DataFormatError` naming it, or is skipped when `skip_corrupt`; ids that
    would mix images up (one id twice, one file under two ids, annotations of unlisted ids) are refused.
    `images_root` None: found near the JSON (see `find_images_root`).
    """
    ann_file = Path(ann_file)
    data = _load_json(ann_file)
    try:
        cats = sorted(data["categories"], key=lambda c: int(c["id"]))
        category_ids = [int(c["id"]) for c in cats]
        class_names = [str(c["name"]) for c in cats]
    except (KeyError, TypeError, ValueError) as e:
        raise DataFormatError(f"malformed category in {ann_file}: {e!r}") from None
    if not cats:
        raise DataFormatError(f"{ann_file} lists no categories, so no class can be learnt or scored; add a "
                              "'categories' list such as [{\"id\": 1, \"name\": \"cat\"}]")
    label_of: Dict[int, int] = {cid: i for i, cid in enumerate(category_ids)}
    _check_ids(data, ann_file)

    first = str(data["images"][0].get("file_name", "")) if data["images"] and isinstance(data["images"][0], dict) else ""
    images_dir = _images_dir(Path(images_root) if images_root else find_images_root(ann_file, first), split_dir, first)
    policy = BadFilePolicy(skip_corrupt, str(ann_file))
    degenerate = DegenerateCounter(str(ann_file))

    anns_by_image: Dict[int, List[dict]] = {}
    bad_images = set()
    for ann in data["annotations"]:
        try:
            image_id = int(ann["image_id"])
            if ann.get("iscrowd", 0):
                continue  # crowd regions are not single objects; DETR trains without them
            x, y, w, h = (float(v) for v in ann["bbox"])
            if int(ann["category_id"]) not in label_of:
                raise ValueError(f"unknown category_id {ann['category_id']}")
            anns_by_image.setdefault(image_id, []).append({"box": (x, y, x + w, y + h), "label": label_of[int(ann["category_id"])]})
        except (KeyError, TypeError, ValueError) as e:
            policy.handle(DataFormatError(f"malformed annotation id={ann.get('id', '?')} in {ann_file}: {e!r}"))
            bad_images.add(str(ann.get("image_id")))  # compared as text: the id itself may be malformed

    records: List[ImageRecord] = []
    for img in tqdm(data["images"], desc=f"reading {ann_file.name}", disable=None, leave=False):
        try:
            image_id = int(img["id"])
            path = images_dir / str(img["file_name"])
        except (KeyError, TypeError, ValueError) as e:
            policy.handle(DataFormatError(f"malformed image entry in {ann_file}: {e!r}"))
            continue
        if str(image_id) in bad_images:
            continue  # an annotation of it was malformed and skipped; keeping the rest would hide an object
        try:
            width, height = image_size(path, decode=policy.skip)
        except DataFormatError as e:
            policy.handle(e)
            continue
        anns = anns_by_image.get(image_id, [])
        boxes = np.array([a["box"] for a in anns], np.float32).reshape(-1, 4)
        labels = np.array([a["label"] for a in anns], np.int64)
        boxes, labels = clean_boxes(boxes, labels, width, height, degenerate)
        records.append(ImageRecord(image_id, path, width, height, boxes, labels))
    policy.report()
    degenerate.report()
    return records, class_names, category_ids
