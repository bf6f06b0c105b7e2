"""Image preprocessing shared by deployment and training-time evaluation.

numpy + OpenCV only, no per-pixel Python. The training stack calls these same functions,
so an exported model sees exactly the pixels it was evaluated on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(image_rgb: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> float32 [3, H, W] as (x / 255 - mean) / std.

    Computed in float32 in that order, which equals torchvision's ToTensor + Normalize bit for bit.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] image, got shape {image_rgb.shape}")
    x = image_rgb.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def resize_shorter_side(image: np.ndarray, size: int, max_size: int = 0) -> Tuple[np.ndarray, float]:
    """Resize so the shorter side is `size` (longer side capped at `max_size` if > 0) -> (image, scale)."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    if max_size and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if (nh, nw) == (h, w):
        return image, 1.0
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR), scale


@dataclass(frozen=True)
class LetterboxInfo:
    """How an original image maps into the network input: x_net = x_orig * scale + pad."""

    scale: float
    pad_x: int
    pad_y: int
    orig_size: Tuple[int, int]  # (H, W)


def letterbox(image: np.ndarray, size_hw: Tuple[int, int], pad_value: int = 0) -> Tuple[np.ndarray, LetterboxInfo]:
    """Resize keeping the aspect ratio into `size_hw`, padding bottom/right with `pad_value`."""
    h, w = image.shape[:2]
    th, tw = size_hw
    scale = min(th / h, tw / w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else image
    out = np.full((th, tw) + image.shape[2:], pad_value, dtype=image.dtype)
    out[:nh, :nw] = resized
    return out, LetterboxInfo(scale, 0, 0, (h, w))
