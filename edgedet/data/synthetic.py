"""Synthetic shapes: a COCO-format image dataset and an MP4 clip with per-frame ground truth.

Every object is a rendered sprite (anti-aliased mask + colour) pasted where it overlaps no
other object, so its box is exactly the bounding box of its pixels. Image i of a dataset depends
only on (seed, i): a larger dataset with the same seed starts with the same images.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple, Union

import cv2
import numpy as np
from tqdm import tqdm

from edgedet.data.camera_world import CameraWorld, render_camera_scene
from edgedet.data.shape_drawing import SHAPES, check_num_classes, contrasting_colour, paste, render_background, shape_sprite

logger = logging.getLogger(__name__)

STYLES = ("plain", "camera")
GENERATOR_VERSION = 1  # bump when rendering changes so cached datasets are regenerated


def render_scene(
    rng: np.random.Generator, height: int, width: int, num_classes: int = 3, max_objects: int = 6
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[np.ndarray]]:
    """-> (image uint8 [H, W, 3] RGB, boxes_xyxy float32 [n, 4] pixels, labels int64 [n],
    masks: n bool [H, W], the pixels each object covers). Objects never overlap."""
    check_num_classes(num_classes)
    image = render_background(rng, height, width)
    occupied = np.zeros((height, width), bool)
    boxes, labels, masks = [], [], []
    side = min(height, width)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(num_classes))
        alpha = shape_sprite(SHAPES[label], rng.uniform(0.12, 0.3) * side, rng.uniform(0, 2 * np.pi))
        h, w = alpha.shape
        if h >= height or w >= width:
            continue
        for _try in range(30):
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            mask = np.zeros((height, width), bool)
            mask[y : y + h, x : x + w] = alpha > 0
            # one pixel of margin so shapes never touch (their boxes still may overlap a little)
            if not (cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & occupied).any():
                break
        else:
            continue
        paste(image, alpha, contrasting_colour(rng, image[y : y + h, x : x + w]), x, y)
        occupied |= mask
        boxes.append([x, y, x + w, y + h])
        labels.append(label)
        masks.append(mask)
    return image, np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64), masks


def generate_synthetic(
    out_dir: Union[str, Path],
    num_images: int,
    image_size: int = 256,
    seed: int = 0,
    num_classes: int = 3,
    max_objects: int = 6,
    image_format: str = "jpg",
    style: str = "plain",
    width: int = 0,
) -> Path:
    """Write `out_dir/images/NNNNNN.<jpg|png>` and `out_dir/annotations.json` (COCO, category id =
    label + 1, names from SHAPES) -> the JSON path. Image i is rendered from (seed, i).

    style: "plain" (shapes pasted apart on a static texture) or "camera" (a frame of
    `camera_world.CameraWorld`: occlusion, blur, light, shapes cut by the border; objects mostly
    hidden are written as crowd regions, which training skips). width: 0 = square images."""
    check_num_classes(num_classes)
    if style not in STYLES:
        raise ValueError(f"synthetic style must be one of {', '.join(STYLES)}, got '{style}'")
    height, width = image_size, width or image_size
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got '{image_format}'")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in tqdm(range(num_images), desc="synthetic images", disable=None, leave=False):
        rng = np.random.default_rng([seed, i])
        if style == "camera":
            image, boxes, labels, crowd = render_camera_scene(rng, height, width, num_classes, max_objects)
        else:
            image, boxes, labels, _ = render_scene(rng, height, width, num_classes, max_objects)
            crowd = np.zeros(len(labels), bool)
        name = f"images/{i + 1:06d}.{image_format}"
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpg" else []
        if not cv2.imwrite(str(out_dir / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params):
            raise OSError(f"could not write {out_dir / name}")
        images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
        for (x0, y0, x1, y1), label, is_crowd in zip(boxes.tolist(), labels.tolist(), crowd.tolist()):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                 "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": int(is_crowd)}
            )
    categories = [{"id": k + 1, "name": SHAPES[k]} for k in range(num_classes)]
    ann_path = out_dir / "annotations.json"
    ann_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_path


def cached_synthetic(cache_root: Union[str, Path], split: str, num_images: int, image_size: int, seed: int,
                     num_classes: int = 3, max_objects: int = 6, style: str = "plain", width: int = 0) -> Path:
    """Generate once into `cache_root/<split>-<params hash>/` and reuse -> annotations JSON path.

    Written to a temporary folder and renamed into place, so concurrent processes (DDP ranks)
    never see a half-written dataset.
    """
    params = dict(v=GENERATOR_VERSION, n=num_images, size=image_size, seed=seed, classes=num_classes, objects=max_objects)
    if style != "plain" or width:  # plain square datasets keep the cache names they always had
        params.update(style=style, width=width)
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    final = Path(cache_root).expanduser() / f"{split}-{num_images}x{image_size}{f'x{width}' if width else ''}-{digest}"
    if (final / "annotations.json").is_file():
        return final / "annotations.json"
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        logger.info("generating %d synthetic %s images into %s", num_images, split, final)
        generate_synthetic(tmp, num_images, image_size, seed, num_classes, max_objects, style=style, width=width)
        os.rename(tmp, final)
    except OSError:
        if not (final / "annotations.json").is_file():  # not another process winning the rename
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final / "annotations.json"


def render_synthetic_video(
    path: Union[str, Path],
    num_frames: int = 120,
    size: Tuple[int, int] = (360, 640),
    fps: int = 15,
    seed: int = 0,
    num_classes: int = 3,
    num_objects: int = 4,
    style: str = "plain",
) -> List[List[Dict]]:
    """Write an MP4 (mp4v) of moving shapes and `path.with_suffix('.json')`.

    Returns per frame a list of {"box_xyxy": [x0, y0, x1, y1] pixels, "label", "name", "track_id"}.
    style "plain": shapes bounce over a static texture, fully inside the frame, and may pass over
    each other. style "camera": `camera_world.CameraWorld` (panning background, changing light,
    motion blur, an occluder, shapes entering and leaving); entries also carry "visible" (share of
    the object in view) and "ignore" (too little in view to be scored).
    """
    check_num_classes(num_classes)
    if style not in STYLES:
        raise ValueError(f"synthetic style must be one of {', '.join(STYLES)}, got '{style}'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = size
    if style == "camera":
        world = CameraWorld(np.random.default_rng(seed), height, width, num_classes, num_objects)

        def frames():
            for _ in range(num_frames):
                yield world.render()
                world.step()

        return _write_video(path, frames(), fps, (height, width), num_classes)
    rng = np.random.default_rng(seed)
    background = render_background(rng, height, width)
    objects = []
    for track_id in range(num_objects):
        label = int(rng.integers(num_classes))
        alpha = shape_sprite(SHAPES[label], rng.uniform(0.12, 0.25) * min(size), rng.uniform(0, 2 * np.pi))
        h, w = alpha.shape
        pos = np.array([rng.uniform(0, width - w), rng.uniform(0, height - h)])
        vel = rng.uniform(1.5, 5.0, 2) * rng.choice([-1, 1], 2)
        objects.append({"id": track_id, "label": label, "alpha": alpha, "pos": pos, "vel": vel,
                        "colour": contrasting_colour(rng, background)})

    def frames():
        for _ in range(num_frames):
            frame = background.copy()
            gt = []
            for obj in objects:
                h, w = obj["alpha"].shape
                limit = np.array([width - w, height - h], np.float64)
                pos, vel = obj["pos"] + obj["vel"], obj["vel"]
                for k in range(2):  # reflect off the borders
                    if pos[k] < 0:
                        pos[k], vel[k] = -pos[k], abs(vel[k])
                    elif pos[k] > limit[k]:
                        pos[k], vel[k] = 2 * limit[k] - pos[k], -abs(vel[k])
                obj["pos"] = pos.clip(0, limit)
                x, y = (int(round(v)) for v in obj["pos"])
                paste(frame, obj["alpha"], obj["colour"], x, y)
                gt.append({"box_xyxy": [float(x), float(y), float(x + w), float(y + h)], "label": obj["label"],
                           "name": SHAPES[obj["label"]], "track_id": obj["id"]})
            yield frame, gt

    return _write_video(path, frames(), fps, (height, width), num_classes)


def _write_video(path: Path, frames, fps: int, size: Tuple[int, int], num_classes: int) -> List[List[Dict]]:
    """Write (RGB frame, ground truth) pairs as an MP4 and the truth beside it -> per-frame truth."""
    height, width = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MP4 (mp4v) to {path}")
    frames_gt: List[List[Dict]] = []
    try:
        for frame, gt in tqdm(frames, desc="rendering video", disable=None, leave=False):
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            frames_gt.append(gt)
    finally:
        writer.release()
    meta = {"fps": fps, "size": [height, width], "class_names": list(SHAPES[:num_classes]), "frames": frames_gt}
    path.with_suffix(".json").write_text(json.dumps(meta))
    return frames_gt
