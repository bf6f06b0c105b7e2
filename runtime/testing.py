"""Toy ONNX artifacts for tests, benches and examples that must run without a trained model.

`make_blob_artifact` writes a small real ONNX graph plus its sidecar manifest: a "colour
blob detector" whose outputs follow deterministically from its input. For each network
channel c (R, G, B for RGB order) it thresholds the normalised input, and reports the
bounding box of the pixels above the threshold as class c with score 0.9 (0 when none).
`blob_reference` computes the same outputs with numpy, so tests can check every number.

Needs the `onnx` package (a test/convert dependency, not a runtime one).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np

from runtime.manifest import Manifest, OutputSpec, PreprocessSpec, write_sidecar

BLOB_CLASSES = ("red", "green", "blue")
BLOB_THRESHOLD = 1.0  # normalised units: a saturated channel is ~2.2, black ~-2, letterbox padding ~0
BLOB_SCORE = 0.9


def blob_reference(x: np.ndarray, layout: str = "postprocessed") -> Dict[str, np.ndarray]:
    """numpy twin of the toy graph: x [B, 3, H, W] -> the outputs the artifact of `layout` returns."""
    _, _, h, w = x.shape
    mask = (x > BLOB_THRESHOLD).astype(np.float32)
    cols, rows = mask.max(axis=2), mask.max(axis=3)  # [B, 3, W], [B, 3, H]
    x0, y0 = cols.argmax(axis=2), rows.argmax(axis=2)
    x1, y1 = w - cols[..., ::-1].argmax(axis=2), h - rows[..., ::-1].argmax(axis=2)
    boxes = np.stack([x0, y0, x1, y1], axis=-1).astype(np.float32)
    present = mask.max(axis=(2, 3))
    b = x.shape[0]
    if layout == "postprocessed":
        return {"labels": np.tile(np.arange(3, dtype=np.int64), (b, 1)), "boxes": boxes, "scores": present * np.float32(BLOB_SCORE)}
    scale = np.array([w, h, w, h], np.float32)
    cxcywh = np.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2,
                       boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]], axis=-1) / scale
    a = present * 8 - 4  # +4 when present, -4 when not
    eye = np.eye(3, dtype=np.float32)
    logits = a[..., None] * eye + (eye - 1) * 4
    if layout == "softmax":
        logits = np.concatenate([logits, -a[..., None]], axis=-1)  # no-object column wins when absent
    return {"pred_logits": logits.astype(np.float32), "pred_boxes": cxcywh.astype(np.float32)}


def _blob_graph(size_hw: Tuple[int, int], layout: str, dynamic_batch: bool):
    from onnx import TensorProto, helper, numpy_helper

    h, w = size_hw
    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs, output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, list(inputs), [output], **attrs))
        return output

    node("Greater", ["images", const("thr", np.float32(BLOB_THRESHOLD))], "gt")
    mask = node("Cast", ["gt"], "mask", to=TensorProto.FLOAT)
    cols = node("ReduceMax", [mask, const("ax_h", np.array([2], np.int64))], "cols", keepdims=0)  # [B,3,W]
    rows = node("ReduceMax", [mask, const("ax_w", np.array([3], np.int64))], "rows", keepdims=0)  # [B,3,H]
    rev = [const("rs", np.array([-1], np.int64)), const("re", np.array([np.iinfo(np.int64).min], np.int64)),
           const("ra", np.array([2], np.int64)), const("rst", np.array([-1], np.int64))]
    node("Slice", [cols] + rev, "cols_rev")
    node("Slice", [rows] + rev, "rows_rev")
    x0 = node("ArgMax", [cols], "x0", axis=2, keepdims=1)
    y0 = node("ArgMax", [rows], "y0", axis=2, keepdims=1)
    node("ArgMax", ["cols_rev"], "x1r", axis=2, keepdims=1)
    node("ArgMax", ["rows_rev"], "y1r", axis=2, keepdims=1)
    x1 = node("Sub", [const("W", np.array(w, np.int64)), "x1r"], "x1")
    y1 = node("Sub", [const("H", np.array(h, np.int64)), "y1r"], "y1")
    node("Concat", [x0, y0, x1, y1], "boxes_i", axis=2)
    boxes = node("Cast", ["boxes_i"], "boxes_px", to=TensorProto.FLOAT)  # [B,3,4]
    present = node("ReduceMax", [mask, const("ax_hw", np.array([2, 3], np.int64))], "present", keepdims=0)  # [B,3]
    batch = "batch" if dynamic_batch else 1
    if layout == "postprocessed":
        node("Mul", [present, const("score", np.float32(BLOB_SCORE))], "scores")
        node("Identity", [boxes], "boxes")
        node("Shape", ["scores"], "shp")
        node("Expand", [const("lab", np.arange(3, dtype=np.int64)[None]), "shp"], "labels")
        outputs = [helper.make_tensor_value_info("labels", TensorProto.INT64, [batch, 3]),
                   helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [batch, 3, 4]),
                   helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 3])]
    else:
        # Rows x0, y0, x1, y1 -> columns cx, cy, w, h; then / (W, H, W, H).
        m = np.array([[0.5, 0, -1, 0], [0, 0.5, 0, -1], [0.5, 0, 1, 0], [0, 0.5, 0, 1]], np.float32)
        node("MatMul", [boxes, const("to_cxcywh", m)], "cxcywh_px")
        node("Div", ["cxcywh_px", const("wh", np.array([w, h, w, h], np.float32))], "pred_boxes")
        a = node("Sub", [node("Mul", [present, const("eight", np.float32(8))], "p8"), const("four", np.float32(4))], "a")
        node("Unsqueeze", [a, const("ax_last", np.array([2], np.int64))], "a3")
        eye = np.eye(3, dtype=np.float32)
        node("Add", [node("Mul", ["a3", const("eye", eye)], "diag"), const("off", (eye - 1) * 4)], "logits_c")
        c = 3
        if layout == "softmax":
            node("Neg", ["a3"], "noobj")
            node("Concat", ["logits_c", "noobj"], "pred_logits", axis=2)
            c = 4
        else:
            node("Identity", ["logits_c"], "pred_logits")
        outputs = [helper.make_tensor_value_info("pred_logits", TensorProto.FLOAT, [batch, 3, c]),
                   helper.make_tensor_value_info("pred_boxes", TensorProto.FLOAT, [batch, 3, 4])]
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, h, w])]
    graph = helper.make_graph(nodes, "edgedet_blob_" + layout, inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="edgedet.runtime.testing", ir_version=9)


def make_blob_artifact(directory: Union[str, Path], layout: str = "postprocessed", size_hw: Tuple[int, int] = (96, 128),
                       resize: str = "letterbox", dynamic_batch: bool = False, embed: bool = False,
                       sidecar: bool = True, name: str = "blob") -> Path:
    """Write `directory/name.onnx` (+ `name.onnx.edgedet.json`) and return the .onnx path.

    layout: "postprocessed" (labels/boxes/scores) | "softmax" | "sigmoid" (raw pred_logits/pred_boxes).
    embed: also store the manifest in the ONNX metadata_props.
    """
    import onnx

    if layout not in ("postprocessed", "softmax", "sigmoid"):
        raise ValueError(f"unknown layout '{layout}'; valid: postprocessed, softmax, sigmoid")
    post = layout == "postprocessed"
    manifest = Manifest(
        family="blob-toy", class_names=list(BLOB_CLASSES), batch=0 if dynamic_batch else 1,
        preprocess=PreprocessSpec(size=tuple(size_hw), resize=resize),
        outputs=OutputSpec(postprocess=post, names=["labels", "boxes", "scores"] if post else ["pred_logits", "pred_boxes"],
                           score_activation="sigmoid" if layout != "softmax" else "softmax", top_k=3),
    )
    model = _blob_graph(tuple(size_hw), layout, dynamic_batch)
    if embed:
        onnx.helper.set_model_props(model, {"edgedet": manifest.to_json()})
    onnx.checker.check_model(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.onnx"
    onnx.save(model, str(path))
    if sidecar:
        write_sidecar(manifest, path)
    return path


BLOB_BGR = {0: (0, 0, 255), 1: (0, 255, 0), 2: (255, 0, 0)}  # red, green, blue as OpenCV writes them


def make_blob_dataset(directory: Union[str, Path], n: int = 6, seed: int = 0, class_names=BLOB_CLASSES) -> Path:
    """COCO dataset the toy detector scores exactly on: images of mixed sizes with at most one
    rectangle per colour (category ids 7, 8, 9 to exercise id mapping). -> the instances JSON path."""
    import json

    import cv2

    rng = np.random.default_rng(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        h, w = (120, 160) if i % 2 else (200, 150)
        img = np.zeros((h, w, 3), np.uint8)
        for label in rng.choice(3, size=int(rng.integers(1, 4)), replace=False).tolist():
            bw, bh = int(rng.integers(15, 40)), int(rng.integers(15, 40))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            img[y:y + bh, x:x + bw] = np.maximum(img[y:y + bh, x:x + bw], BLOB_BGR[label])
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": 7 + label, "bbox": [x, y, bw, bh],
                         "area": bw * bh, "iscrowd": 0})
        cv2.imwrite(str(directory / f"im{i}.png"), img)
        images.append({"id": 10 + i, "file_name": f"im{i}.png", "height": h, "width": w})
    path = directory / "instances.json"
    cats = [{"id": 7 + k, "name": name} for k, name in enumerate(class_names)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def make_blob_video(path: Union[str, Path], frames: int = 20) -> Path:
    """A red square moving left to right across a 160x120 MJPG video (one track, crosses x = 80)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    for i in range(frames):
        f = np.zeros((120, 160, 3), np.uint8)
        f[20:50, 5 + 6 * i:35 + 6 * i] = BLOB_BGR[0]
        writer.write(f)
    writer.release()
    return Path(path)
