"""Data transforms keep boxes consistent with the pixels; val and deploy preprocessing use the runtime's functions."""
from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from edgedet.config import DataConfig
from edgedet.data import build_transforms, deploy_transform
from edgedet.data import transforms as T
from runtime.preprocess import letterbox, normalize


def _target(boxes, labels=None):
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    labels = np.arange(len(boxes), dtype=np.int64) if labels is None else np.array(labels, np.int64)
    return {"boxes": boxes, "labels": labels, "image_id": 1, "orig_size": np.array([60, 80], np.int64)}


def test_flip_twice_is_identity_and_flip_mirrors_boxes():
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    target = _target([[10, 5, 30, 25], [0, 0, 80, 60]])
    once_img, once = T.hflip(image, target)
    np.testing.assert_array_equal(once["boxes"][0], [50, 5, 70, 25])
    twice_img, twice = T.hflip(once_img, once)
    np.testing.assert_array_equal(twice_img, image)
    np.testing.assert_array_equal(twice["boxes"], target["boxes"])


def test_resize_scales_boxes():
    image = np.zeros((60, 80, 3), np.uint8)
    out, t = T.resize(image, _target([[10, 5, 30, 25]]), 120, max_size=1000)
    assert out.shape[:2] == (120, 160)
    np.testing.assert_allclose(t["boxes"][0], [20, 10, 60, 50])
    out, t = T.resize(image, _target([[10, 5, 30, 25]]), 120, max_size=100)  # longer side capped at 100
    assert out.shape[:2] == (75, 100)
    np.testing.assert_allclose(t["boxes"][0], [12.5, 6.25, 37.5, 31.25])


def test_crop_keeps_only_visible_parts():
    image = np.zeros((60, 80, 3), np.uint8)
    target = _target([[10, 10, 30, 30], [50, 40, 70, 55], [0, 0, 5, 5]])
    out, t = T.crop(image, target, top=20, left=20, height=30, width=40)
    assert out.shape[:2] == (30, 40)
    # box 0 clipped to the crop, box 1 partly visible, box 2 gone together with its label
    np.testing.assert_array_equal(t["boxes"], [[0, 0, 10, 10], [30, 20, 40, 30]])
    np.testing.assert_array_equal(t["labels"], [0, 1])


def test_random_size_crop_keeps_an_object():
    random.seed(0)
    image = np.zeros((200, 200, 3), np.uint8)
    for _ in range(30):
        _, t = T.RandomSizeCrop(50, 100)(image, _target([[150, 150, 160, 160]]))
        assert len(t["boxes"]) == 1


@pytest.mark.parametrize("seed", range(6))
def test_filled_rectangle_stays_under_its_box(seed):
    """A rectangle painted into the image must stay under its box through the random train pipeline."""
    random.seed(seed)
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(120, 200)), int(rng.integers(120, 200))
    x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
    x1, y1 = x0 + int(rng.integers(20, 40)), y0 + int(rng.integers(20, 40))
    image = np.zeros((h, w, 3), np.uint8)
    image[y0:y1, x0:x1] = (255, 255, 255)
    cfg = DataConfig(scales=[96, 128, 160], max_size=220, random_crop=True, hflip=0.5)
    pipeline = build_transforms(cfg, train=True)
    assert isinstance(pipeline.transforms[-1], T.Normalize)
    for _ in range(5):
        out, t = T.Compose(pipeline.transforms[:-1])(image, _target([[x0, y0, x1, y1]]))
        oh, ow = out.shape[:2]
        assert tuple(t["size"]) == (oh, ow)
        bright = np.argwhere(out[..., 0] > 127)
        if len(t["boxes"]) == 0:
            assert len(bright) == 0
            continue
        cx, cy, bw, bh = t["boxes"][0] * np.array([ow, oh, ow, oh])
        bx0, by0, bx1, by1 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
        # bright pixel centres lie inside the box and span it (within interpolation blur)
        assert bright[:, 1].min() + 0.5 >= bx0 - 1 and bright[:, 1].max() + 0.5 <= bx1 + 1
        assert bright[:, 0].min() + 0.5 >= by0 - 1 and bright[:, 0].max() + 0.5 <= by1 + 1
        assert bright[:, 1].min() <= bx0 + 1.5 and bright[:, 1].max() + 1 >= bx1 - 1.5


def test_val_transform_is_deterministic_and_normalises_with_runtime():
    cfg = DataConfig(val_size=64, max_size=100)
    image = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    pipeline = build_transforms(cfg, train=False)
    a, ta = pipeline(image, _target([[8, 8, 40, 40]]))
    b, tb = pipeline(image, _target([[8, 8, 40, 40]]))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 64, 85) and a.dtype == np.float32
    resized = cv2.resize(image, (85, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(a, normalize(resized, cfg.mean, cfg.std))
    np.testing.assert_allclose(ta["boxes"][0], [24 / 64, 24 / 48, 32 / 64, 32 / 48], atol=1e-6)


def test_deploy_transform_letterboxes_image_and_boxes():
    image = np.random.default_rng(2).integers(0, 255, (50, 100, 3), dtype=np.uint8)
    tf = deploy_transform((64, 64), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), pad_value=114)
    x, t = tf(image, _target([[10, 10, 50, 30]]))
    canvas, info = letterbox(image, (64, 64), 114)
    np.testing.assert_array_equal(x, normalize(canvas, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert info.scale == pytest.approx(0.64) and t["letterbox"] == info
    # box (10, 10, 50, 30) * 0.64 -> (6.4, 6.4, 32, 19.2) on a 64 x 64 canvas, as normalised cxcywh
    np.testing.assert_allclose(t["boxes"][0], [19.2 / 64, 12.8 / 64, 25.6 / 64, 12.8 / 64], atol=1e-6)
    x_only, t_only = tf(image)
    np.testing.assert_array_equal(x_only, x)
    assert t_only["boxes"].shape == (0, 4) and t_only["orig_size"].tolist() == [50, 100]




def test_deploy_transform_stretch_scales_each_axis():
    image = np.random.default_rng(3).integers(0, 255, (50, 100, 3), dtype=np.uint8)
    x, t = deploy_transform((64, 64), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), resize="stretch")(image, _target([[10, 10, 50, 30]]))
    np.testing.assert_array_equal(x, normalize(cv2.resize(image, (64, 64), interpolation=cv2.INTER_LINEAR), (0.5,) * 3, (0.25,) * 3))
    np.testing.assert_allclose(t["letterbox"].to_original(np.array([[6.4, 12.8, 32, 38.4]])), [[10, 10, 50, 30]], atol=1e-4)
    # x scaled by 0.64, y by 1.28: (6.4, 12.8, 32, 38.4) as normalised cxcywh of 64 x 64
    np.testing.assert_allclose(t["boxes"][0], [19.2 / 64, 25.6 / 64, 25.6 / 64, 25.6 / 64], atol=1e-6)
    with pytest.raises(ValueError, match="letterbox, stretch"):
        deploy_transform((64, 64), (0.5,) * 3, (0.25,) * 3, resize="crop")
