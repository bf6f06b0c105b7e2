"""Export defaults taken from the checkpoint instead of guessed: input size, output folder, score
threshold and the images `--verify` compares on.

Each function returns the value and a short reason, which the CLI prints, so a default is never silent.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from edgedet.data.export_size import FALLBACK_IMGSZ, validation_dataset, default_imgsz

log = logging.getLogger(__name__)

THRESHOLD_IMAGES = 32  # validation images scored to pick the threshold (a few seconds for small models)


ACCURACY_KEYS = ("epoch", "val_mAP", "val_mAP50", "val_deployed_mAP", "val_deployed_mAP50", "deployed_imgsz")


def training_accuracy(source: Any) -> Dict[str, Any]:
    """The validation figures an `edgedet train` checkpoint recorded (the training view and, from the last
    epoch, the deployed view), for the export manifest; {} for modules, official or older checkpoints."""
    if not isinstance(source, (str, Path)) or not Path(source).is_file():
        return {}
    from edgedet.engine.checkpoint import CheckpointError, load_checkpoint

    try:
        metrics = load_checkpoint(source).get("metrics") or {}
    except CheckpointError:
        return {}
    return {k: metrics[k] for k in ACCURACY_KEYS if k in metrics}


def default_output_dir(source: Any) -> Path:
    """`runs/export/<checkpoint or model name>/`: generated files stay out of the working directory."""
    name = Path(str(source)).stem if isinstance(source, (str, Path)) else type(source).__name__.lower()
    if isinstance(source, (str, Path)) and Path(source).is_file() and Path(source).parent.name:
        name = f"{Path(source).parent.name}-{name}"  # runs/dd/best.pth -> runs/export/dd-best
    return Path("runs") / "export" / name


def recommend_threshold(model, experiment: Dict[str, Any], max_images: int = THRESHOLD_IMAGES,
                        progress: bool = False) -> Tuple[float, str]:
    """The best-F1 score threshold of `model` on its validation split (at most `max_images` images,
    spread over the split), or the documented fallback when no validation data is readable."""
    from edgedet.engine.threshold import FALLBACK_THRESHOLD, best_f1_threshold

    dataset = validation_dataset(experiment)
    if dataset is None:
        return FALLBACK_THRESHOLD, "fallback (no validation data in the checkpoint's config)"
    if getattr(getattr(model, "config", None), "num_classes", len(dataset.class_names)) != len(dataset.class_names):
        return FALLBACK_THRESHOLD, "fallback (the validation data has another number of classes)"
    from converters.calibration import evenly_spaced
    from edgedet.data import build_dataloader
    from edgedet.data.records import DetectionDataset
    from edgedet.engine.evaluator import predict_coco

    records = evenly_spaced(dataset.records, max_images)
    subset = DetectionDataset(records, dataset.class_names, dataset.category_ids, dataset.transforms, dataset.name)
    from edgedet.data.padding import batch_padding

    divisor, fill = batch_padding(model, subset)  # RT-DETR / D-FINE: sides rounded up to 32, as in training
    loader = build_dataloader(subset, batch_size=1, shuffle=False, num_workers=0, distributed=False,
                              size_divisor=divisor, fill=fill)
    results = predict_coco(model, loader, subset.category_ids, progress=progress)
    label_of = {c: i for i, c in enumerate(subset.category_ids)}
    per_image: Dict[int, List[Any]] = {r.image_id: [] for r in records}
    for res in results:
        per_image.setdefault(res["image_id"], []).append(res)
    dets, gts = [], []
    for r in records:
        rows = per_image[r.image_id]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in rows)], np.float64).reshape(-1, 4)
        dets.append((boxes, np.array([label_of[d["category_id"]] for d in rows], np.int64),
                     np.array([d["score"] for d in rows], np.float64)))
        gts.append((r.boxes_xyxy, r.labels))
    best = best_f1_threshold(dets, gts)
    return round(best["threshold"], 4), (f"best F1 {best['f1']:.3f} (P {best['precision']:.2f}, R {best['recall']:.2f}) "
                                          f"on {len(records)} validation images")


def default_verify_images(calib: Any, experiment: Dict[str, Any], limit: int = 8) -> Tuple[Any, str]:
    """Images for `--verify` when none are given: the calibration images, else the checkpoint's validation
    images, else frames rendered for the purpose (synthetic shapes: any detector's input domain is covered
    well enough to compare an engine with PyTorch, which is all verify does)."""
    if calib is not None:
        return calib, "the calibration images"
    dataset = validation_dataset(experiment)
    if dataset is not None and dataset.records:
        from converters.calibration import evenly_spaced

        return [r.path for r in evenly_spaced(dataset.records, limit)], f"{dataset.name} images"
    from edgedet.data.synthetic import render_scene

    rng = np.random.default_rng(0)
    frames = [render_scene(rng, 320, 320)[0][:, :, ::-1].copy() for _ in range(limit)]
    return frames, f"{limit} rendered synthetic frames"


__all__ = ["default_imgsz", "training_accuracy", "default_output_dir", "recommend_threshold", "default_verify_images", "FALLBACK_IMGSZ"]
