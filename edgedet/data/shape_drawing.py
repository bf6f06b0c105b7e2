"""Drawing the synthetic shapes: each shape's anti-aliased alpha sprite, textured backgrounds, and
pasting a sprite in a colour that stands out from what is under it.

Shared by the plain shapes dataset (`synthetic.py`) and the camera-like world (`camera_world.py`).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "crescent")


def check_num_classes(num_classes: int) -> None:
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be 1..{len(SHAPES)} (shapes: {', '.join(SHAPES)}), got {num_classes}")


def _polygon(radii: Sequence[float], angle: float, phase: float = 0.0) -> np.ndarray:
    """Vertices at the given radii, evenly spaced around the origin, rotated by `angle` radians."""
    t = phase + angle + np.arange(len(radii)) * 2 * np.pi / len(radii)
    return np.stack([np.cos(t) * radii, np.sin(t) * radii], axis=1)


def shape_sprite(shape: str, size: float, angle: float) -> np.ndarray:
    """uint8 alpha mask [h, w] of one shape about `size` px across, tight-cropped to its pixels."""
    c = int(np.ceil(size * 1.5)) + 4
    mask = np.zeros((c, c), np.uint8)
    centre = np.array([c / 2, c / 2])
    r = size / 2

    def fill(points: np.ndarray, value: int = 255) -> None:
        pts = np.round((points + centre) * 16).astype(np.int32)  # 4 fractional bits (shift=4)
        cv2.fillPoly(mask, [pts], value, lineType=cv2.LINE_AA, shift=4)

    def disc(offset: np.ndarray, radius: float, value: int) -> None:
        ctr = tuple(int(v) for v in np.round((centre + offset) * 16))
        cv2.circle(mask, ctr, int(round(radius * 16)), value, -1, lineType=cv2.LINE_AA, shift=4)

    if shape == "circle":
        disc(np.zeros(2), r, 255)
    elif shape == "square":
        fill(_polygon([r * np.sqrt(2)] * 4, angle, np.pi / 4))
    elif shape == "triangle":
        fill(_polygon([r * 1.1] * 3, angle))
    elif shape == "star":
        fill(_polygon([r * 1.1, r * 0.45] * 5, angle))
    elif shape == "hexagon":
        fill(_polygon([r] * 6, angle))
    elif shape == "cross":
        a, b = r, r * 0.33
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]])
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        fill(pts @ rot.T)
    elif shape == "ring":
        disc(np.zeros(2), r, 255)
        disc(np.zeros(2), r * 0.55, 0)
    elif shape == "crescent":
        disc(np.zeros(2), r, 255)
        disc(np.array([np.cos(angle), np.sin(angle)]) * r * 0.5, r * 0.85, 0)
    else:
        raise ValueError(f"unknown shape '{shape}'. Valid shapes: {', '.join(SHAPES)}")
    ys, xs = np.nonzero(mask)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def render_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3] texture: a colour gradient, stripes or blotchy noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c1, c2 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    theta = rng.uniform(0, np.pi)
    proj = xx * np.cos(theta) + yy * np.sin(theta)
    kind = rng.integers(3)
    if kind == 0:  # gradient
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
    elif kind == 1:  # stripes
        t = 0.5 + 0.5 * np.sin(2 * np.pi * proj / rng.uniform(8, 40))
    else:  # low-frequency noise blown up into blotches
        small = rng.uniform(0, 1, (max(2, height // 16), max(2, width // 16))).astype(np.float32)
        t = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    image = c1 * (1 - t[..., None]) + c2 * t[..., None]
    image += rng.normal(0, rng.uniform(3, 15), image.shape).astype(np.float32)
    return image.clip(0, 255).astype(np.uint8)


def contrasting_colour(rng: np.random.Generator, patch: np.ndarray) -> np.ndarray:
    """The colour, of 16 random draws, farthest from the patch's mean colour."""
    mean = patch.reshape(-1, 3).mean(0)
    options = rng.uniform(0, 255, (16, 3))
    return options[np.abs(options - mean).sum(1).argmax()].astype(np.float32)


def paste(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray, x: int, y: int) -> None:
    """Blend `colour` into `image` through the uint8 `alpha` sprite with its top-left corner at (x, y), in place."""
    h, w = alpha.shape
    a = alpha.astype(np.float32)[..., None] / 255.0
    region = image[y : y + h, x : x + w].astype(np.float32)
    image[y : y + h, x : x + w] = (region * (1 - a) + colour * a).round().astype(np.uint8)
