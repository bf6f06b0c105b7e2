"""How a model wants its batches padded: the size divisor of the input sides and the padding colour.

Mask-free families (RT-DETR, D-FINE) need H and W divisible by their coarsest stride (32): the hybrid
encoder upsamples each level x2 onto the next finer one and the anchors are laid out at H/s x W/s, so a
side like 469 px (BCCD's 640x480 at shorter side 352) breaks the shapes. Like the official models they
also ignore the padding mask and see padding as image content, so it gets the colour the deployed
runtime letterboxes with (`runtime.manifest.PreprocessSpec.pad_value`), normalised as the images are.
Families that use the mask keep zero padding and divisor 1 (their behaviour before).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from edgedet.config import ConfigError


def model_size_divisor(model: Any) -> int:
    """What the input's H and W must divide by (1 = anything); models declare `input_size_divisor`."""
    return max(1, int(getattr(model, "input_size_divisor", 1) or 1))


def resolve_size_divisor(requested: int, model: Any) -> int:
    """`data.size_divisor` (0 = the model's need) checked against the model: a ConfigError, not a shape crash."""
    need = model_size_divisor(model)
    if requested < 0:
        raise ConfigError(f"data.size_divisor must be 0 (the model's need, {need}) or positive, got {requested}")
    if requested == 0:
        return need
    if requested % need:
        family = getattr(getattr(model, "config", None), "name", type(model).__name__)
        raise ConfigError(f"data.size_divisor {requested} cannot work with '{family}': its input sides must divide by "
                          f"{need}; use 0 (= {need}) or a multiple of {need}")
    return int(requested)


def check_input_size(model: Any, size_hw: Sequence[int], what: str = "imgsz") -> None:
    """A fixed input size (export, `edgedet val --imgsz`) the model cannot take is a ValueError naming the
    nearest valid sides, instead of a shape error deep inside the network."""
    d = model_size_divisor(model)
    h, w = (int(v) for v in size_hw)
    if h % d == 0 and w % d == 0:
        return
    near = [" or ".join(map(str, sorted({max(d, s // d * d), max(d, -(-s // d) * d)}))) for s in (h, w)]
    family = getattr(getattr(model, "config", None), "name", "") or type(model).__name__
    raise ValueError(f"'{family}' needs input sides divisible by {d}: {what} {h}x{w} (H x W) cannot work; "
                     f"nearest valid H {near[0]}, W {near[1]}")


def pad_fill(model: Any, mean: Sequence[float], std: Sequence[float]) -> Optional[Tuple[float, float, float]]:
    """Per-channel padding value for `model`'s batches: the runtime's letterbox colour normalised with
    (mean, std) for families that see padding as content (`pads_as_content`), None (zero) otherwise."""
    if not getattr(model, "pads_as_content", False):
        return None
    from edgedet.data.transforms import DEPLOY_PAD_VALUE

    colour = np.asarray(DEPLOY_PAD_VALUE, np.float32) / np.float32(255.0)  # as runtime.preprocess.normalize computes it
    value = (colour - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return tuple(float(v) for v in value)


def dataset_normalization(dataset: Any) -> Optional[Tuple[Sequence[float], Sequence[float]]]:
    """(mean, std) of the Normalize step in `dataset.transforms`, or None when it has none."""
    from edgedet.data.transforms import Normalize

    steps = getattr(getattr(dataset, "transforms", None), "transforms", None) or []
    norm = next((t for t in steps if isinstance(t, Normalize)), None)
    return (norm.mean, norm.std) if norm is not None else None


def batch_padding(model: Any, dataset: Any, requested: int = 0) -> Tuple[int, Optional[Tuple[float, float, float]]]:
    """(size_divisor, fill) for `build_dataloader` over `dataset` feeding `model`."""
    divisor = resolve_size_divisor(requested, model)
    norm = dataset_normalization(dataset)
    return divisor, (pad_fill(model, *norm) if norm is not None else None)


__all__ = ["model_size_divisor", "resolve_size_divisor", "check_input_size", "pad_fill", "dataset_normalization", "batch_padding"]
