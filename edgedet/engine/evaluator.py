"""COCO-style evaluation: run the model on a dataset and score it with pycocotools' COCOeval."""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Dict, Iterable, List, Optional, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edgedet.engine.postprocess import to_detections
from runtime.types import Detections

log = logging.getLogger(__name__)

# COCOeval.stats order.
STAT_NAMES = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def coco_metrics(coco_gt, results: List[Dict]) -> Dict[str, float]:
    """Score COCO result records (image_id, category_id, bbox xywh, score) against `coco_gt`.

    Returns the 12 COCOeval statistics by name (-1 where a size range has no objects); all zeros
    when there are no results. pycocotools' printed report goes to the debug log.
    """
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {k: 0.0 for k in STAT_NAMES}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    log.debug("%s", buf.getvalue())
    return {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}


@torch.no_grad()
def predict_coco(model: nn.Module, loader: Iterable, category_ids, device: Union[str, torch.device] = "cpu",
                 top_k: int = 100, progress: bool = True) -> List[Dict]:
    """COCO result records for every image the loader yields ((images, mask, targets) batches)."""
    was_training = model.training
    model.eval()
    activation = model.score_activation
    results: List[Dict] = []
    for images, mask, targets in tqdm(loader, desc="eval", leave=False, disable=not progress):
        outputs = model(images.to(device), mask.to(device) if mask is not None else None)
        for t, det in zip(targets, batch_detections(outputs, targets, activation, top_k)):
            results.extend(det.to_coco(int(t["image_id"]), category_ids))
    model.train(was_training)
    return results


def box_frames(targets) -> torch.Tensor:
    """[B, 2] (H, W) that the normalised boxes of each image scale by to reach its original pixels: the
    original size, or for boxes normalised to the padded input (`canvas`) that input in original pixels."""
    rows = []
    for t in targets:
        orig = torch.as_tensor(t["orig_size"], dtype=torch.float64)
        if "canvas" in t:
            orig = torch.as_tensor(t["canvas"], dtype=torch.float64) * orig / torch.as_tensor(t["size"], dtype=torch.float64)
        rows.append(orig)
    return torch.stack(rows)


def batch_detections(outputs, targets, activation: str, top_k: int = 100) -> List[Detections]:
    """Model outputs of a collated batch -> Detections in each original image's pixels, clipped to it
    (as the deployed runtime clips), whichever frame the boxes were normalised to."""
    out = []
    for t, det in zip(targets, to_detections(outputs, box_frames(targets), activation, top_k, clip=True)):
        if "canvas" in t:  # boxes of the whole input (mask-free families): clip to the image itself
            h, w = (int(v) for v in t["orig_size"])
            boxes = np.clip(det.boxes_xyxy, 0, np.array([w, h, w, h], np.float32))
            det = Detections(boxes, det.scores, det.labels, det.class_names, (h, w))
        out.append(det)
    return out


def evaluate(model: nn.Module, dataset, batch_size: int = 2, device: Union[str, torch.device] = "cpu",
             top_k: int = 100, progress: bool = True, loader: Optional[Iterable] = None,
             size_divisor: int = 0) -> Dict[str, float]:
    """mAP, mAP50, mAP75, … of `model` on `dataset` (a DetectionDataset with `coco_gt()` and
    `category_ids`). `loader` overrides the default non-shuffled loader over `dataset`, whose batches
    are padded as the model needs (`size_divisor` = data.size_divisor, 0 = the model's own)."""
    if loader is None:
        from edgedet.data import build_dataloader
        from edgedet.data.padding import batch_padding

        divisor, fill = batch_padding(model, dataset, size_divisor)
        loader = build_dataloader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, distributed=False,
                                  size_divisor=divisor, fill=fill)
    results = predict_coco(model, loader, dataset.category_ids, device, top_k, progress)
    metrics = coco_metrics(dataset.coco_gt(), results)
    metrics["num_detections"] = float(len(results))
    log.debug("eval: %s", {k: round(v, 4) for k, v in metrics.items()})
    return metrics


__all__ = ["evaluate", "coco_metrics", "predict_coco", "batch_detections", "box_frames", "STAT_NAMES"]
