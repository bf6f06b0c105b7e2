"""Photometric jitter and decoding of gray / RGBA / 16-bit images for training."""
from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from edgedet.config import DataConfig, ExperimentConfig, load_experiment, save_yaml
from edgedet.data.augment import ColorJitter, to_uint8_rgb
from edgedet.data.records import load_image_rgb
from edgedet.data.transforms import build_transforms
from edgedet.models import default_config


def test_gray_rgba_and_16bit_images_load_as_uint8_rgb(tmp_path):
    ramp = np.tile(np.arange(64, dtype=np.uint16) * 64, (8, 1))  # 12-bit sensor values 0..4032 in 16 bits
    cv2.imwrite(str(tmp_path / "gray16.png"), ramp)
    img = load_image_rgb(tmp_path / "gray16.png")
    assert img.dtype == np.uint8 and img.shape == (8, 64, 3)
    assert img.max() >= 250 and img[0, 0, 0] == 0  # full range, not divided by 256 (max 15)
    assert np.array_equal(img[..., 0], img[..., 2])

    gray = np.arange(80, dtype=np.uint8).reshape(8, 10)
    cv2.imwrite(str(tmp_path / "gray8.png"), gray)
    assert np.array_equal(load_image_rgb(tmp_path / "gray8.png")[..., 1], gray)

    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 200, 10, 7  # blue, red, alpha
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    rgb = load_image_rgb(tmp_path / "rgba.png")
    assert rgb.shape == (4, 5, 3) and tuple(rgb[0, 0]) == (10, 0, 200)
    assert to_uint8_rgb(np.full((2, 2), 0.5, np.float32)).max() == 128


def test_color_jitter_brightness_and_hue():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 200, size=(6, 7, 3), dtype=np.uint8)
    target = {"boxes": np.array([[1, 1, 4, 4]], np.float32)}
    random.seed(3)
    out, t = ColorJitter(brightness=0.5)(image, target)
    random.seed(3)
    f = random.uniform(0.5, 1.5)
    assert np.array_equal(out, np.clip(image.astype(np.float32) * f + 0.5, 0, 255).astype(np.uint8))
    assert t is target
    out, _ = ColorJitter(hue=0.5)(image, target)
    assert out.shape == image.shape and not np.array_equal(out, image)
    assert ColorJitter()(image, target)[0] is image
    with pytest.raises(ValueError, match="hue must be in"):
        ColorJitter(hue=0.7)


def test_jitter_is_configured_and_saved(tmp_path):
    cfg = ExperimentConfig(model=default_config("detr"), data=DataConfig(color_jitter=[0.4, 0.4, 0.4, 0.1], random_crop=True, scales=[96, 128]))
    names = repr(build_transforms(cfg.data, train=True))
    assert "ColorJitter(brightness=0.4" in names and "RandomSizeCrop" in names and "RandomHorizontalFlip" in names
    assert "ColorJitter" not in repr(build_transforms(cfg.data, train=False))
    save_yaml(cfg, tmp_path / "cfg.yaml")
    assert "color_jitter" in (tmp_path / "cfg.yaml").read_text()
    assert load_experiment(tmp_path / "cfg.yaml").data.color_jitter == [0.4, 0.4, 0.4, 0.1]
    with pytest.raises(ValueError, match="needs 4 values"):
        build_transforms(DataConfig(color_jitter=[0.1]), train=True)
