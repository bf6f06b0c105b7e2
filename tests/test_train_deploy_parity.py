"""What ships is what was trained (#25): the exported engine, fed the runtime's letterbox and the valid
region, gives the training-side evaluation's detections for images of their own aspect.

Training side: each image resized keeping its aspect (the val transform), padded bottom/right by the
collate function with a padding mask, `model(images, mask)`, boxes mapped to the original image. Engine
side: `runtime.Detector` on the original BGR frames (letterbox into the export size, `valid_hw` input).
The export size is the collated batch's size, so both see the same pixels.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest
import torch

from converters import export
from converters.openvino.convert import fused_extension_available
from edgedet.data.collate import collate_fn
from edgedet.data.transforms import Normalize, ToTarget, resize
from edgedet.engine.postprocess import to_detections
from runtime.detector import Detector
from export_helpers import build_tiny

MASK_FAMILIES = ["detr", "deformable_detr", "dab_detr", "dino", "co_dino"]
VAL_SIZE = 96


def frames() -> List[np.ndarray]:
    """Two BGR images of different aspect (landscape and portrait) with some structure."""
    rng = np.random.default_rng(3)
    out = []
    for h, w in ((150, 250), (230, 140)):
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        for _ in range(4):
            y, x = int(rng.integers(0, h - 40)), int(rng.integers(0, w - 40))
            img[y:y + 35, x:x + 30] = rng.integers(120, 255, 3, dtype=np.uint8)
        out.append(img)
    return out


def training_side(model, bgr_frames: Sequence[np.ndarray], canvas=None):
    """edgedet's evaluation path: val resize (shorter side VAL_SIZE), normalise, collate with mask
    (padded further to `canvas` (H, W) when given, as a batch holding a larger image would be)."""
    norm = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    items = []
    for f in bgr_frames:
        target = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
        img, t = resize(f[:, :, ::-1].copy(), target, VAL_SIZE)
        img, t = ToTarget()(img, t)
        img, t = norm(img, t)
        items.append((torch.from_numpy(img), {"orig_size": np.array(f.shape[:2])}))
    images, mask, targets = collate_fn(items)
    if canvas is not None:
        pad = (0, canvas[1] - images.shape[-1], 0, canvas[0] - images.shape[-2])
        images = torch.nn.functional.pad(images, pad)
        mask = torch.nn.functional.pad(mask, pad, value=True)
    with torch.no_grad():
        out = model(images, mask)
    orig = torch.stack([torch.as_tensor(t["orig_size"]) for t in targets])
    return to_detections(out, orig, model.score_activation, top_k=100, clip=True), tuple(images.shape[-2:])


def assert_same(ref, got, tol: float = 1e-4) -> None:
    for r, g in zip(ref, got):
        n = min(len(r.scores), len(g.scores), 20)
        np.testing.assert_allclose(g.scores[:n], r.scores[:n], atol=tol)
        np.testing.assert_array_equal(g.labels[:n], r.labels[:n])
        h, w = r.image_size
        scale = np.array([w, h, w, h], np.float32)
        np.testing.assert_allclose(g.boxes_xyxy[:n] / scale, r.boxes_xyxy[:n] / scale, atol=tol)


def has_msda(model) -> bool:
    return any("MSDeformAttn" in type(m).__name__ for m in model.modules())


def check_family(family: str, fmt: str, tmp_path: Path) -> None:
    model = build_tiny(family)
    deploy = model.to_base_model().eval() if hasattr(model, "to_base_model") else model
    imgs = frames()
    _, canvas = training_side(deploy, imgs)  # the export size: the two-image batch's
    msda = ("fused" if fmt == "openvino" else "grid_sample") if has_msda(deploy) else None
    path = export(deploy, format=fmt, output=tmp_path / ("m.xml" if fmt == "openvino" else "m.onnx"), imgsz=canvas,
                  msda=msda, dynamic_batch=True, score_threshold=0.0, class_names=list("abcd"[:deploy.config.num_classes]))
    with Detector(path, conf=0.0) as det:
        assert det.manifest.valid_input == "valid_hw"
        for batch in ([imgs[1]], imgs):  # one image, then two of different aspects in one batch
            ref, _ = training_side(deploy, batch, canvas)
            assert_same(ref, det.batch(batch))


@pytest.mark.parametrize("family", MASK_FAMILIES)
def test_onnxruntime_equals_training_side_eval(family: str, tmp_path: Path):
    check_family(family, "onnx", tmp_path)


@pytest.mark.skipif(not fused_extension_available(), reason="the OpenVINO MSDA extension is not built")
@pytest.mark.parametrize("family", ["dino", pytest.param("deformable_detr", marks=pytest.mark.slow),
                                    pytest.param("co_dino", marks=pytest.mark.slow)])
def test_openvino_fused_equals_training_side_eval(family: str, tmp_path: Path):
    check_family(family, "openvino", tmp_path)


@pytest.mark.parametrize("family", ["rtdetr", pytest.param("dfine", marks=pytest.mark.slow)])
def test_mask_free_family_evaluates_in_its_deployed_frame(family: str, tmp_path: Path):
    """RT-DETR / D-FINE see padding as image content: training pads batches with the letterbox colour to a
    multiple of 32 and normalises boxes to that padded input, as the deployed letterbox does. An image whose
    resized width (166) is padded to 192 gives the same detections on both sides."""
    from edgedet.data.padding import pad_fill

    model = build_tiny(family)
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 255, (150, 260, 3), dtype=np.uint8)
    mean, std = tuple(model.input_mean), tuple(model.input_std)
    target = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
    img, t = resize(frame[:, :, ::-1].copy(), target, VAL_SIZE)
    img, t = Normalize(mean, std)(*ToTarget()(img, t))
    item = (torch.from_numpy(img), {**t, "boxes": torch.zeros(0, 4), "orig_size": np.array(frame.shape[:2])})
    images, mask, targets = collate_fn([item], size_divisor=32, fill=pad_fill(model, mean, std))
    assert tuple(images.shape[-2:]) == (96, 192) and mask.any()  # 166 px of image, 26 px of padding
    from edgedet.engine.evaluator import batch_detections

    with torch.no_grad():
        ref = batch_detections(model(images, mask), targets, model.score_activation)
    path = export(model, format="onnx", output=tmp_path / "m.onnx", imgsz=(96, 192), score_threshold=0.0,
                  class_names=list("abcd"[:model.config.num_classes]))
    with Detector(path, conf=0.0) as det:
        assert det.manifest.valid_input == "" and det.manifest.preprocess.resize == "letterbox"
        assert_same(ref, [det(frame)], tol=2e-4)


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_uint8_input_normalised_in_the_graph_equals_the_float_input(fmt: str, tmp_path: Path):
    """`input_format="uint8_nhwc"`: the runtime only letterboxes, the graph normalises; same detections (<= 1e-5)."""
    model = build_tiny("dino")
    imgs = frames()
    results = []
    for input_format in ("float32_nchw", "uint8_nhwc"):
        suffix = ".xml" if fmt == "openvino" else ".onnx"
        path = export(model, format=fmt, output=tmp_path / f"{input_format}{suffix}", imgsz=(128, 160),
                      msda="grid_sample", dynamic_batch=True, score_threshold=0.0, input_format=input_format,
                      class_names=list("abcd"[:model.config.num_classes]))
        with Detector(path, conf=0.0) as det:
            x, infos = det.preprocess(imgs)
            assert x.dtype == (np.uint8 if input_format == "uint8_nhwc" else np.float32)
            if input_format == "uint8_nhwc":
                assert x.shape == (2, 128, 160, 3)
            results.append(det.batch(imgs))
    assert_same(results[0], results[1], tol=1e-5)
