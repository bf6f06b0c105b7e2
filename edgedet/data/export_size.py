"""The input size a deployed model gets by default: the training scale at the data's typical aspect.

`edgedet export` uses it, and so do `edgedet val` on a checkpoint and the deployed-view figure at the end of
training and in `edgedet eval`, so the number shown before shipping is the number of what ships.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, Tuple

import numpy as np

log = logging.getLogger(__name__)

FALLBACK_IMGSZ = (640, 640)


def data_config_of(experiment: Dict[str, Any]):
    from edgedet.config import DataConfig, from_dict

    data = (experiment or {}).get("data")
    if not isinstance(data, dict) or not data:
        return None
    try:
        return from_dict(DataConfig, data, "data")
    except (KeyError, ValueError, TypeError):
        return None


def validation_dataset(experiment: Dict[str, Any]):
    """The training run's validation split, or None when it cannot be read here."""
    cfg = data_config_of(experiment)
    if cfg is None:
        return None
    from edgedet.data import build_dataset

    try:
        return build_dataset(cfg, "val")
    except (FileNotFoundError, ValueError, KeyError, OSError) as e:
        log.debug("validation data of the checkpoint not readable: %s", e)
        return None


def _round32(x: float) -> int:
    return max(32, int(math.ceil(x / 32.0)) * 32)


def default_imgsz(experiment: Dict[str, Any]) -> Tuple[Tuple[int, int], str]:
    """(H, W) the model saw at validation in training, and why: shorter side `data.val_size`, longer side from
    the validation images' median aspect ratio (capped at `data.max_size`), rounded up to a multiple of 32 (every
    family's size divisor divides it; the few extra pixels are padding, masked for the families with a mask).
    A letterbox into it resizes the typical image exactly as the training-time evaluation did."""
    cfg = data_config_of(experiment)
    if cfg is None:
        return FALLBACK_IMGSZ, "no training config in the checkpoint; pass --imgsz H W for your data"
    short = int(cfg.val_size)
    aspect, landscape = 1.0, True
    if cfg.format != "synthetic":
        dataset = validation_dataset(experiment)
        if dataset is not None and dataset.records:
            ratios = [max(r.width, r.height) / max(1, min(r.width, r.height)) for r in dataset.records[:200]]
            aspect = float(np.median(ratios))
            landscape = sum(r.width >= r.height for r in dataset.records[:200]) * 2 >= len(ratios)
    long = short * aspect
    if cfg.max_size and long > cfg.max_size:
        short, long = short * cfg.max_size / long, float(cfg.max_size)
    if cfg.format == "synthetic" or aspect == 1.0:
        hw = (_round32(short), _round32(short))
    else:
        hw = (_round32(short), _round32(long)) if landscape else (_round32(long), _round32(short))
    return hw, f"the checkpoint's training scale (data.val_size {cfg.val_size}, max_size {cfg.max_size})"


__all__ = ["default_imgsz", "FALLBACK_IMGSZ"]
