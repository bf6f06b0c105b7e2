"""Photometric augmentation and pixel-format normalisation for small real datasets.

`ColorJitter`: brightness / contrast / saturation / hue jitter in random order, as the DETR-family
recipes (torchvision's ColorJitter semantics, on uint8 RGB with OpenCV).
`to_uint8_rgb`: any decoded image (grayscale, RGBA, 16-bit, float) -> uint8 [H, W, 3] RGB.
"""
from __future__ import annotations

import random
from typing import Sequence, Tuple

import cv2
import numpy as np


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """BGR(A) / gray image of any depth as OpenCV decodes it -> uint8 RGB.

    16-bit images are scaled by the bit depth their values use (12-bit sensor data stored in
    16 bits becomes full range instead of nearly black); float images in [0, 1] are scaled by 255.
    """
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]  # alpha is not part of what the detector sees
    if image.dtype != np.uint8:
        x = image.astype(np.float32)
        top = float(x.max()) if x.size else 0.0
        if image.dtype.kind == "f" and top <= 1.0:
            scale = 255.0
        else:  # integers: the smallest power of two above the largest value (>= 8 bits)
            scale = 255.0 / (2.0 ** max(8, int(np.ceil(np.log2(top + 1)))) - 1) if top > 0 else 1.0
        image = np.clip(x * scale + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2RGB)


class ColorJitter:
    """Random brightness, contrast, saturation (factors in [1 - v, 1 + v]) and hue (shift in [-h, h]
    of a full turn, h <= 0.5), applied in random order to a uint8 RGB image; boxes are unchanged."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0):
        for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if v < 0:
                raise ValueError(f"data.color_jitter {name} must be >= 0, got {v}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"data.color_jitter hue must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    @staticmethod
    def _factor(v: float) -> float:
        return random.uniform(max(0.0, 1 - v), 1 + v)

    def __call__(self, image: np.ndarray, target):
        ops = []
        if self.brightness > 0:
            ops.append(lambda x, f=self._factor(self.brightness): x * f)
        if self.contrast > 0:
            ops.append(lambda x, f=self._factor(self.contrast): (x - _gray(x).mean()) * f + _gray(x).mean())
        if self.saturation > 0:
            ops.append(lambda x, f=self._factor(self.saturation): (x - _gray(x)[..., None]) * f + _gray(x)[..., None])
        if self.hue > 0:
            ops.append(lambda x, s=random.uniform(-self.hue, self.hue): _shift_hue(x, s))
        if not ops:
            return image, target
        random.shuffle(ops)
        x = image.astype(np.float32)
        for op in ops:
            x = np.clip(op(x), 0, 255)
        return (x + 0.5).astype(np.uint8), target

    def __repr__(self) -> str:
        return f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation}, hue={self.hue})"


def _gray(x: np.ndarray) -> np.ndarray:
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def _shift_hue(x: np.ndarray, shift: float) -> np.ndarray:
    hsv = cv2.cvtColor(np.clip(x, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(round(shift * 256))) % 256).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL).astype(np.float32)


def color_jitter(values: Sequence[float]) -> Tuple[float, float, float, float]:
    """Validate data.color_jitter: [brightness, contrast, saturation, hue]."""
    if len(values) != 4:
        raise ValueError(f"data.color_jitter needs 4 values [brightness, contrast, saturation, hue], got {list(values)}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


__all__ = ["ColorJitter", "to_uint8_rgb", "color_jitter"]
