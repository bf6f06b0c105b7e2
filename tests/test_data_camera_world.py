"""The camera-like rendered world: its boxes are the visible pixels, occlusion and borders are
accounted for, shapes enter and leave, and datasets/videos built from it are deterministic."""
from __future__ import annotations

import json

import numpy as np

from edgedet.config import DataConfig
from edgedet.data import build_dataset, generate_synthetic, render_synthetic_video
from edgedet.data.camera_world import MIN_VISIBLE, VISIBLE_ALPHA, CameraWorld


def _flat_world(seed: int, height: int = 120, width: int = 200, shapes: int = 3) -> CameraWorld:
    """A world on a flat grey texture without an occluder, so each pixel's alpha can be read back."""
    world = CameraWorld(np.random.default_rng(seed), height, width, num_classes=3, num_objects=shapes)
    world.texture[:] = 50  # dark enough that the brightest light (x1.62) never saturates the shape's 150
    world.occluder = None
    for s in world.shapes:
        s.colour = np.array([150.0, 0.0, 0.0], np.float32)
        s.coloured = True  # keep the colour
    return world


def _light_field(world: CameraWorld) -> np.ndarray:
    return world._light(np.ones((world.height, world.width, 3), np.float32))[..., 0]


def test_boxes_are_the_visible_pixels_of_each_shape():
    """Recover every pixel's alpha from the rendered frame (flat background, known colour, the light
    divided out) and compare the extent of alpha >= VISIBLE_ALPHA with the ground-truth box."""
    checked = 0
    for seed in range(4):
        world = _flat_world(seed, shapes=1)  # one shape: no overlaps, so the alpha is its own
        for _ in range(40):
            light = _light_field(world)
            frame, truth = world.render()
            if world.blur_frames:  # defocus smears the read-back; those frames are checked elsewhere
                world.step()
                continue
            alpha = ((frame[..., 0] / light - 50.0) / 100.0).clip(0, 1)  # red channel: 50 -> 150
            for obj in truth:
                ys, xs = np.nonzero(alpha >= VISIBLE_ALPHA)
                box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
                # sensor noise (sigma 3 of 100) moves the threshold crossing by at most a pixel or two
                np.testing.assert_allclose(box, obj["box_xyxy"], atol=2)
                checked += 1
            world.step()
    assert checked > 60


def test_occluded_and_cut_shapes_report_what_is_visible():
    world = _flat_world(3, shapes=1)
    shape = world.shapes[0]
    _, (full,) = world.render()
    assert full["visible"] > 0.95 and not full["ignore"]
    # a pole covering the shape's left part: the box keeps only the right part
    x0, y0, x1, y1 = full["box_xyxy"]
    cut = int((x0 + x1) / 2)
    world.occluder = np.zeros((world.height, 2 * world.width), np.float32)
    world.occluder[:, :cut] = 1.0
    world.occluder_x = 0.0  # the frame shows the occluder's columns [0, width)
    _, (half,) = world.render()
    assert abs(half["box_xyxy"][0] - cut) <= 1 and half["box_xyxy"][2] == x1
    assert 0.3 < half["visible"] < 0.7
    # moved mostly out of the frame: clipped at the border, then too little in view to be scored
    world.occluder = None
    shape.centre = np.array([-0.3 * shape.size, shape.centre[1]])
    _, (edge,) = world.render()
    assert edge["box_xyxy"][0] == 0 and edge["visible"] < MIN_VISIBLE and edge["ignore"]


def test_shapes_enter_and_leave_and_the_camera_moves(tmp_path):
    path = tmp_path / "clip.mp4"
    gt = render_synthetic_video(path, num_frames=200, size=(90, 160), fps=15, seed=5, num_objects=3, style="camera")
    again = render_synthetic_video(tmp_path / "again.mp4", num_frames=200, size=(90, 160), fps=15, seed=5, num_objects=3,
                                   style="camera")
    assert gt == again and json.loads(path.with_suffix(".json").read_text())["frames"] == gt
    ids = {o["track_id"] for objs in gt for o in objs}
    assert len(ids) > 3  # shapes left and new ones came in
    counts = [len(objs) for objs in gt]
    assert min(counts) < max(counts)
    assert any(0 < o["visible"] < 0.9 for objs in gt for o in objs)  # partly hidden or cut by the border
    assert {o["label"] for o in gt[0]} == {0, 1, 2}  # every class in view on the first frame


def test_camera_style_dataset_marks_hidden_shapes_as_crowd(tmp_path):
    ann = generate_synthetic(tmp_path / "a", 30, image_size=64, width=112, seed=1, style="camera")
    data = json.loads(ann.read_text())
    assert {(im["height"], im["width"]) for im in data["images"]} == {(64, 112)}
    crowd = [a for a in data["annotations"] if a["iscrowd"]]
    assert crowd and len(crowd) < len(data["annotations"])
    assert generate_synthetic(tmp_path / "b", 30, image_size=64, width=112, seed=1, style="camera").read_text() == ann.read_text()
    cfg = DataConfig(format="synthetic", root=str(tmp_path / "cache"), synthetic_train_images=30, synthetic_val_images=2,
                     synthetic_image_size=64, synthetic_width=112, synthetic_style="camera", scales=[64], val_size=64)
    train = build_dataset(cfg, "train")
    assert sum(len(r.labels) for r in train.records) == len(data["annotations"]) - len(crowd)  # training skips crowds
