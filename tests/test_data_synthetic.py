"""Synthetic shapes: exact boxes, deterministic datasets, the cached `synthetic` format and the video clip."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edgedet.config import DataConfig
from edgedet.data import build_dataset, generate_synthetic, render_synthetic_video
from edgedet.data.shape_drawing import SHAPES, shape_sprite
from edgedet.data.synthetic import render_scene


def test_synthetic_boxes_are_exact():
    for i in range(10):
        image, boxes, labels, masks = render_scene(np.random.default_rng([5, i]), 128, 160, num_classes=8)
        assert image.shape == (128, 160, 3) and len(boxes) == len(labels) == len(masks) >= 1
        for box, mask in zip(boxes.astype(int), masks):
            ys, xs = np.nonzero(mask)
            # every pixel of the shape is inside its box and the box touches the shape on all sides
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(box)
        union = np.sum(masks, axis=0)
        assert union.max() <= 1  # shapes never overlap


def test_every_shape_renders_and_too_many_classes_fail():
    for name in SHAPES:
        sprite = shape_sprite(name, 30.0, 0.3)
        assert sprite.dtype == np.uint8 and 20 <= max(sprite.shape) <= 45
        assert sprite[0].any() and sprite[-1].any() and sprite[:, 0].any() and sprite[:, -1].any()
    with pytest.raises(ValueError, match="crescent"):
        generate_synthetic("unused", 1, num_classes=len(SHAPES) + 1)


def test_generate_synthetic_is_deterministic(tmp_path):
    a = generate_synthetic(tmp_path / "a", 4, image_size=96, seed=7, num_classes=4)
    b = generate_synthetic(tmp_path / "b", 4, image_size=96, seed=7, num_classes=4)
    c = generate_synthetic(tmp_path / "c", 4, image_size=96, seed=8, num_classes=4)
    assert a.read_text() == b.read_text() != c.read_text()
    for name in ("000001.jpg", "000004.jpg"):
        assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()
    data = json.loads(a.read_text())
    assert [c["name"] for c in data["categories"]] == ["circle", "square", "triangle", "star"]
    _, boxes, labels, _ = render_scene(np.random.default_rng([7, 0]), 96, 96, 4, 6)
    first = [ann for ann in data["annotations"] if ann["image_id"] == 1]
    np.testing.assert_allclose([ann["bbox"] for ann in first], np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])
    assert [ann["category_id"] - 1 for ann in first] == labels.tolist()


def test_synthetic_format_is_cached_and_splits_differ(tmp_path):
    cfg = DataConfig(format="synthetic", root=str(tmp_path), synthetic_train_images=3, synthetic_val_images=2,
                     synthetic_image_size=64, scales=[64], val_size=64)
    train = build_dataset(cfg, "train")
    folders = sorted(p.name for p in tmp_path.iterdir())
    again = build_dataset(cfg, "train")
    val = build_dataset(cfg, "val")
    assert len(train) == 3 and len(val) == 2 and train.class_names == ["circle", "square", "triangle"]
    assert [r.path for r in again.records] == [r.path for r in train.records]
    assert len(list(tmp_path.iterdir())) == len(folders) + 1  # the second train build generated nothing
    assert train.records[0].path.read_bytes() != val.records[0].path.read_bytes()
    image, target = train[0]
    assert image.shape[1:] == (64, 64) and len(target["boxes"]) == len(train.records[0].labels)


def test_synthetic_video_frames_and_ground_truth(tmp_path):
    path = tmp_path / "clip.mp4"
    gt = render_synthetic_video(path, num_frames=12, size=(72, 128), fps=10, seed=3, num_objects=3)
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == len(gt) == 12 and frames[0].shape == (72, 128, 3)
    saved = json.loads(path.with_suffix(".json").read_text())
    assert saved["frames"] == gt and saved["size"] == [72, 128] and saved["fps"] == 10
    for objs in gt:
        assert [o["track_id"] for o in objs] == [0, 1, 2]
        for o in objs:
            x0, y0, x1, y1 = o["box_xyxy"]
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 72 and o["name"] == SHAPES[o["label"]]
    moved = [gt[0][k]["box_xyxy"] != gt[-1][k]["box_xyxy"] for k in range(3)]
    assert all(moved)
    assert render_synthetic_video(tmp_path / "again.mp4", num_frames=12, size=(72, 128), fps=10, seed=3, num_objects=3) == gt


