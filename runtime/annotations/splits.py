"""Which images a split holds: split lists (`.txt` one id per line, or CSV) and a seeded hold-out."""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import List, Sequence

import numpy as np

from runtime.annotations.common import DataFormatError

logger = logging.getLogger(__name__)

_ID_COLUMNS = ("id", "image", "image_id", "filename", "file_name", "file")


def _unique(ids: Sequence[str]) -> List[str]:
    """First-seen order, each id once (a split lists images, not boxes)."""
    return list(dict.fromkeys(ids))


def read_split_ids(split_file: Path, split: str = "") -> List[str]:
    """Image ids (file stems) of a split file, each once, in first-seen order.

    `.txt`: one id per line (VOC's ImageSets). `.csv`: an id column (first column, or one named
    id/image/image_id/filename/file_name/file) and optionally a `split` column filtered by `split`.
    A CSV with one row per box (the Kaggle/Roboflow export `filename,width,height,class,xmin,...`)
    names an image once per box: it is read as one image per file name.
    """
    split_file = Path(split_file)
    if not split_file.is_file():
        raise FileNotFoundError(f"VOC split file not found: {split_file} (one image id per line, e.g. ImageSets/Main/train.txt, "
                                "or a CSV; without split files set data.val_fraction to hold out part of the images)")
    if split_file.suffix.lower() != ".csv":
        ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        unique = _unique(ids)
        if len(unique) < len(ids):
            logger.warning("%s lists %d id(s) more than once; each image is read once", split_file, len(ids) - len(unique))
        return unique
    rows = [r for r in csv.reader(split_file.read_text().splitlines()) if r and any(c.strip() for c in r)]
    header = [c.strip().lower() for c in rows[0]] if rows else []
    id_col = next((header.index(k) for k in _ID_COLUMNS if k in header), None)
    split_col = header.index("split") if "split" in header else None
    if id_col is None and split_col is None:
        header, id_col = [], 0  # no header row
    body = rows[1:] if header else rows
    id_col = 0 if id_col is None else id_col
    ids = []
    for lineno, r in enumerate(body, start=2 if header else 1):
        if len(r) <= max(id_col, split_col or 0):
            raise DataFormatError(f"malformed split CSV {split_file}:{lineno}: {len(r)} column(s), the header has {len(header)}")
        if split_col is None or not split or r[split_col].strip().lower() == split.lower():
            ids.append(Path(r[id_col].strip()).stem)
    unique = _unique(ids)
    if len(unique) < len(ids):
        logger.info("%s: %d rows name %d images (one row per box)", split_file, len(ids), len(unique))
    return unique


def holdout_split(ids: Sequence[str], split: str, val_fraction: float, seed: int) -> List[str]:
    """`split` ("train" or "val") of `ids` with `val_fraction` of them (at least one) held out for val,
    chosen by a seeded shuffle so train and eval agree on it."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    if split not in ("train", "val"):
        raise ValueError(f"with data.val_fraction the splits are 'train' and 'val', not '{split}'")
    order = sorted(ids)
    np.random.default_rng(seed).shuffle(order)
    n_val = min(len(order) - 1, max(1, int(round(len(order) * val_fraction))))
    return sorted(order[:n_val] if split == "val" else order[n_val:])
