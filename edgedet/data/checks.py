"""Checks across dataset splits that catch silent mistakes before training starts."""
from __future__ import annotations

import logging
from typing import Dict, List

import numpy as np

logger = logging.getLogger(__name__)


def object_counts(dataset) -> Dict[str, int]:
    """Class name -> number of objects in the dataset's records."""
    names = list(dataset.class_names)
    counts = np.zeros(len(names), np.int64)
    for record in getattr(dataset, "records", []):
        if len(record.labels):
            counts += np.bincount(np.asarray(record.labels, np.int64), minlength=len(names))[: len(names)]
    return dict(zip(names, counts.tolist()))


def report_split_classes(train_ds, val_ds, few: int = 2) -> List[str]:
    """Warn about classes with objects in only one of the splits, or with very few objects in all.
    Returns the warnings (also logged)."""
    if not hasattr(train_ds, "records") or not hasattr(val_ds, "records"):
        return []
    train, val = object_counts(train_ds), object_counts(val_ds)
    notes = []
    for name in train_ds.class_names:
        t, v = train.get(name, 0), val.get(name, 0)
        if t and not v and sum(val.values()):
            notes.append(f"class '{name}' has {t} objects in train but none in val (its mAP cannot be measured)")
        elif v and not t:
            notes.append(f"class '{name}' has {v} objects in val but none in train (a misspelt name in one file?)")
        elif 0 < t + v <= few and sum(train.values()) + sum(val.values()) > 20 * few:
            notes.append(f"class '{name}' has only {t + v} object(s) in all: a misspelt class name in one annotation file?")
    for note in notes:
        logger.warning("%s; fix the annotations or set data.class_names", note)
    return notes
