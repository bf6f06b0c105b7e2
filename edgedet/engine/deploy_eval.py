"""The deployed view of a trained model: its mAP on a split exactly as the default export will see the images.

Training-time evaluation resizes each image by its shorter side and pads a batch to its largest image; the
deployed runtime letterboxes every image into one fixed input (`edgedet.data.export_size.default_imgsz`).
Both figures are reported side by side at the end of training and by `edgedet eval`; a gap above
`GAP_WARN` names its cause, so the model a user ships is never silently worse than the one they measured.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from edgedet.engine.evaluator import coco_metrics

log = logging.getLogger(__name__)

GAP_WARN = 0.01  # mAP points (0-1 scale) between the two views that deserve a warning


def evaluate_deployed(model, dataset, experiment: Dict[str, Any], imgsz: Optional[Sequence[int]] = None,
                      batch_size: int = 2, device: str = "cpu", progress: bool = True) -> Dict[str, Any]:
    """mAP of `model` on `dataset` through the runtime's preprocessing at the default export size (or `imgsz`)
    -> COCO metrics plus `imgsz` (H, W) and `imgsz_reason`."""
    from edgedet.data.export_size import default_imgsz
    from edgedet.data.padding import check_input_size
    from edgedet.predictor import TorchDetector, checkpoint_manifest

    why = "given"
    if imgsz is None:
        imgsz, why = default_imgsz(experiment)
    check_input_size(model, imgsz)
    was_training = model.training
    model.eval()
    detector = TorchDetector(model, checkpoint_manifest(model, experiment, imgsz), conf=0.0, device=device)
    results = []
    records = dataset.records
    step = max(1, int(batch_size))
    for start in tqdm(range(0, len(records), step), desc="eval (deployed view)", leave=False, disable=not progress):
        chunk = records[start:start + step]
        frames = [_bgr(dataset, r) for r in chunk]
        for r, det in zip(chunk, detector.batch(frames)):
            results.extend(det.to_coco(r.image_id, dataset.category_ids))
    model.train(was_training)
    metrics: Dict[str, Any] = coco_metrics(dataset.coco_gt(), results)
    metrics.update(imgsz=[int(imgsz[0]), int(imgsz[1])], imgsz_reason=why)
    return metrics


def _bgr(dataset, record) -> np.ndarray:
    """The record's image decoded as training decodes it (16-bit, gray and RGBA handled), in BGR order."""
    from edgedet.data.records import load_image_rgb

    return np.ascontiguousarray(load_image_rgb(record.path)[:, :, ::-1])


def gap_report(training_view: Dict[str, float], deployed_view: Dict[str, Any], family: str = "") -> Tuple[str, Optional[str]]:
    """(one line with both figures, a warning naming the cause or None)."""
    h, w = deployed_view["imgsz"]
    gap = float(deployed_view["mAP"]) - float(training_view["mAP"])
    line = (f"mAP {training_view['mAP']:.4f} / mAP50 {training_view['mAP50']:.4f} (training view: shorter side resize) | "
            f"{deployed_view['mAP']:.4f} / {deployed_view['mAP50']:.4f} as deployed ({h}x{w} letterbox, the default "
            f"export size: {deployed_view.get('imgsz_reason', '')}); gap {gap:+.4f}")
    if abs(gap) <= GAP_WARN:
        return line, None
    cause = ("the deployed input letterboxes every image into one fixed size, so images of another aspect than "
             "the typical one are seen smaller (or larger) than in training")
    if family in ("rtdetr", "dfine"):
        cause += "; this family sees the letterbox padding as image content"
    return line, (f"the deployed model scores {gap:+.4f} mAP against the training-time figure: {cause}; "
                  "export at another --imgsz (and check it with `edgedet val --model CKPT --imgsz H W`) "
                  "or train at the deployed size")


__all__ = ["evaluate_deployed", "gap_report", "GAP_WARN"]
