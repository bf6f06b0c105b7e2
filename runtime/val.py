"""`edgedet val` / `runtime.val.val()`: COCO metrics of any model on a labelled dataset, torch-free.

    edgedet val --model model.onnx --data ../shared/data/bccd --split test
    edgedet val --model best.pth --data bccd.yaml --split test --imgsz 384 512   # as an export at 384x512 sees it

Engines are fed exactly what their manifest declares; a checkpoint with `--imgsz H W` is fed the
letterbox input an export at that size declares, so checkpoint and engines are comparable.
Scored with pycocotools; writes metrics.json, predictions.json (COCO results), pr_curve.png and
confusion_matrix.png under a fresh runs/val/N.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import time
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from runtime.image_io import read_image
from runtime.commands.common import add_model_arguments, lower_score_floor, say_defaults
from runtime.datasets import Dataset, load_dataset
from runtime.models import load_model
from runtime.paths import next_run_dir
from runtime.types import Detections

log = logging.getLogger(__name__)

SCORE_FLOOR = 0.001  # mAP integrates over scores: keep nearly every detection
CONFUSION_CONF, CONFUSION_IOU = 0.25, 0.5  # the matrix's threshold when the model has no manifest's to use


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def confusion_update(matrix: np.ndarray, dets: Detections, gt_boxes: np.ndarray, gt_labels: np.ndarray,
                     conf: float = CONFUSION_CONF) -> None:
    """Add one image: detections >= conf matched to ground truth at IoU >= 0.5, best score first."""
    bg = matrix.shape[0] - 1
    keep = dets.scores >= conf
    boxes, labels = dets.boxes_xyxy[keep], dets.labels[keep]
    order = np.argsort(-dets.scores[keep], kind="stable")
    matched_gt = np.zeros(len(gt_labels), bool)
    iou = _iou(boxes, gt_boxes) if len(boxes) and len(gt_boxes) else np.zeros((len(boxes), len(gt_boxes)))
    for i in order:
        cand = np.where(~matched_gt & (iou[i] >= CONFUSION_IOU))[0] if iou.shape[1] else np.array([], int)
        if len(cand):
            g = cand[np.argmax(iou[i, cand])]
            matched_gt[g] = True
            matrix[labels[i], gt_labels[g]] += 1
        else:
            matrix[labels[i], bg] += 1
    for g in np.where(~matched_gt)[0]:
        matrix[bg, gt_labels[g]] += 1


def coco_evaluate(dataset: Dataset, sizes: Dict[int, tuple], results: List[dict]) -> Dict[str, Any]:
    """pycocotools COCOeval -> summary stats, per-class AP / AP50, and the IoU-0.5 PR curves."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError("val needs pycocotools: pip install pycocotools") from None
    images, anns = [], []
    for s in dataset.records:
        h, w = sizes[s.image_id]
        images.append({"id": s.image_id, "width": w, "height": h, "file_name": s.path.name})
        for box, label in zip(s.boxes_xyxy.tolist(), s.labels.tolist()):
            bw, bh = box[2] - box[0], box[3] - box[1]
            anns.append({"id": len(anns) + 1, "image_id": s.image_id, "category_id": dataset.category_ids[label],
                         "bbox": [box[0], box[1], bw, bh], "area": bw * bh, "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": c, "name": n} for c, n in zip(dataset.category_ids, dataset.class_names)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not results:
            k = len(dataset.class_names)
            return {"stats": [0.0] * 12, "ap": [0.0] * k, "ap50": [0.0] * k, "precision50": np.full((101, k), -1.0)}
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"][:, :, :, 0, -1]  # [T, R, K] all areas, maxDets 100

    def mean_valid(p: np.ndarray) -> float:
        v = p[p > -1]
        return float(v.mean()) if v.size else -1.0

    present = {a["category_id"] for a in anns}
    ap = [mean_valid(prec[:, :, k]) if c in present else -1.0 for k, c in enumerate(dataset.category_ids)]
    ap50 = [mean_valid(prec[0, :, k]) if c in present else -1.0 for k, c in enumerate(dataset.category_ids)]
    return {"stats": [float(v) for v in ev.stats], "ap": ap, "ap50": ap50, "precision50": prec[0]}


def val(model: Any, data: str, split: str = "val", imgsz: Optional[Sequence[int]] = None, conf: Optional[float] = None,
        project: str = "runs", plots: bool = True, backend: str = "auto", device: str = "CPU",
        classes: Optional[Sequence[int]] = None, quiet: bool = False, dedup_iou: Optional[float] = None,
        score_floor: float = SCORE_FLOOR, **options: Any) -> Dict[str, Any]:
    """Score `model` (artifact path, checkpoint path or a loaded Detector) on `split` of `data`.

    mAP integrates over every detection scoring >= score_floor; conf (None = the manifest's recommended
    threshold, as `predict` draws) is the threshold of the confusion matrix, where a detection counts as made.
    Returns (and writes to runs/val/N/metrics.json) mAP, mAP50, mAP75, per-class AP, counts and paths.
    """
    dataset = load_dataset(data, split)
    detector = load_model(model, imgsz=imgsz, conf=conf, classes=classes, backend=backend, device=device,
                          dedup_iou=dedup_iou, **options)
    try:
        threshold = float(detector.conf)
        dataset = dataset.aligned_to(detector.class_names)
        say_defaults(detector, quiet)  # once the data is known to fit: an error stays one line
        lower_score_floor(detector, score_floor)
        out = next_run_dir(project, "val")
        k = len(dataset.class_names)
        matrix = np.zeros((k + 1, k + 1), np.int64)
        results, sizes = [], {}
        t0 = time.perf_counter()
        infer_ms, truncated = [], []
        for s in tqdm(dataset.records, desc=f"val {split}", disable=quiet or None, unit="img"):
            image, cut = read_image(s.path)
            if cut and image is not None:
                truncated.append(str(s.path))  # scored, but named (read_image warns) and counted
            if image is None:
                raise FileNotFoundError(f"cannot read image {s.path} of {dataset.description}: missing or corrupt; fix or remove it")
            h, w = image.shape[:2]
            sizes[s.image_id] = (h, w)
            dets = detector(image)
            infer_ms.append(sum(dets.timings_ms.values()))
            results += dets.to_coco(s.image_id, dataset.category_ids)
            confusion_update(matrix, dets, s.boxes_xyxy, s.labels, threshold)
        elapsed = time.perf_counter() - t0
        scores = coco_evaluate(dataset, sizes, results)
    finally:
        detector.close()
    stats = scores["stats"]
    instances = np.bincount(np.concatenate([s.labels for s in dataset.records] + [np.zeros(0, np.int64)]), minlength=k)
    metrics = {
        "model": str(getattr(detector, "artifact", model)), "backend": getattr(detector, "backend_name", "?"),
        "data": str(data), "split": split, "images": len(dataset), "instances": int(instances.sum()),
        "input_size": list(detector.input_size), "preprocess": detector.manifest.preprocess.resize,
        "mAP": stats[0], "mAP50": stats[1], "mAP75": stats[2],
        "per_class": {n: {"AP": scores["ap"][i], "AP50": scores["ap50"][i], "instances": int(instances[i])}
                      for i, n in enumerate(dataset.class_names)},
        "ms_per_image": round(1e3 * elapsed / max(1, len(dataset)), 2),
        "confusion_matrix": matrix.tolist(), "confusion_conf": threshold, "dir": str(out), "truncated_images": truncated,
    }
    (out / "predictions.json").write_text(json.dumps(results))
    if plots:
        from runtime.val_plots import confusion_matrix_image, pr_curve_image

        cv2.imwrite(str(out / "pr_curve.png"), pr_curve_image(np.linspace(0, 1, 101), scores["precision50"], dataset.class_names,
                                                              scores["ap50"], f"Precision-recall at IoU 0.5 ({split})"))
        cv2.imwrite(str(out / "confusion_matrix.png"),
                    confusion_matrix_image(matrix, dataset.class_names, f"Confusion matrix (score >= {threshold:.3g})"))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def format_metrics(m: Dict[str, Any]) -> str:
    lines = [f"{'class':<16}{'images':>8}{'instances':>10}{'AP50':>8}{'AP':>8}",
             f"{'all':<16}{m['images']:>8}{m['instances']:>10}{m['mAP50']:>8.3f}{m['mAP']:>8.3f}"]
    for name, c in m["per_class"].items():
        ap50 = f"{c['AP50']:>8.3f}" if c["AP50"] >= 0 else f"{'-':>8}"
        ap = f"{c['AP']:>8.3f}" if c["AP"] >= 0 else f"{'-':>8}"
        lines.append(f"{name[:15]:<16}{'':>8}{c['instances']:>10}{ap50}{ap}")
    lines.append(f"{m['backend']} {m['input_size'][0]}x{m['input_size'][1]} {m['preprocess']}, {m['ms_per_image']:.1f} ms/image; "
                 f"results in {m['dir']}")
    if m.get("truncated_images"):
        lines.append(f"{len(m['truncated_images'])} truncated images scored as far as they decode (named above)")
    return "\n".join(lines)


class ValCommand:
    name = "val"
    help = "COCO metrics of an exported engine or a checkpoint on a labelled dataset (COCO, VOC, YOLO)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_model_arguments(parser, conf_help="score threshold of the confusion matrix (default: the manifest's recommended "
                                              f"one, printed); mAP is scored over every detection >= {SCORE_FLOOR}")
        parser.add_argument("--data", required=True, help="COCO instances JSON, VOC or YOLO folder, YOLO data.yaml, the data YAML "
                            "edgedet train takes, or 'synthetic' (its generated shapes; needs the training extra)")
        parser.add_argument("--split", default="val", help="split to score (default val)")
        parser.add_argument("--no-plots", action="store_true", help="skip pr_curve.png and confusion_matrix.png")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(self, args: argparse.Namespace) -> int:
        m = val(args.model, args.data, args.split, args.imgsz, args.conf, args.project, not args.no_plots, args.backend,
                args.device, args.classes, quiet=args.quiet, dedup_iou=args.dedup_iou)
        print(format_metrics(m))
        return 0


VAL_COMMAND = ValCommand()

__all__ = ["val", "VAL_COMMAND", "coco_evaluate", "confusion_update", "format_metrics"]
