"""What ships is what was trained: train a small DINO on BCCD for a fixed budget, then score one split four ways.

    python benches/train_deploy_gap.py [--budget-s 900] [--split test] [--output runs/bench_gap]

Rows (all on the same split, COCO mAP by pycocotools):
- training view: `edgedet eval`'s path (shorter side resize, batches padded with a mask);
- deployed view: the checkpoint through the runtime's letterbox at the default export size with the mask
  rebuilt from the valid region (what every export of this edgedet runs);
- old export: the same letterbox without the mask (the padding seen as image content: what exports did
  before the valid-region input);
- OpenVINO FP32 and INT8 engines of the default export (fused MSDA where built), through `runtime.Detector`.
Targets: |OpenVINO FP32 - training view| <= 0.005. The last line is one JSON object of the same figures.

BCCD's images are all 640x480, so its default export size fits every image; `--mixed-aspect` also scores the
same checkpoint on crops of the split to aspect ratios from 0.6 to 1.8 (portrait and landscape, the photos a
user brings), where the letterbox pads and the old export's padding-as-content shows.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benches"))

from _machine import load_average, lscpu  # noqa: E402
from edgedet.config import load_experiment, to_dict  # noqa: E402

BCCD = REPO.parent / "shared" / "data" / "bccd"


def machine() -> str:
    """CPU model and the ISA flags that decide speed here (lscpu), and the load."""
    facts = lscpu()
    return f"{facts['model']} | {' '.join(facts['isa'])} | load {' '.join(map(str, load_average()))}"


def score_detector(detector, dataset) -> Dict[str, float]:
    """mAP of a runtime-style detector (`.batch(frames)`) over the dataset's records."""
    import cv2

    from edgedet.engine.evaluator import coco_metrics

    results: List[Dict[str, Any]] = []
    for r in dataset.records:
        frame = cv2.imread(str(r.path), cv2.IMREAD_COLOR)
        results.extend(detector.batch([frame])[0].to_coco(r.image_id, dataset.category_ids))
    return coco_metrics(dataset.coco_gt(), results)


def mixed_aspect(dataset, folder: Path, seed: int = 0):
    """The dataset's images cropped to random aspect ratios in [0.6, 1.8] (w / h), boxes clipped (kept when
    at least half of a box stays), written to `folder` -> a DetectionDataset of the crops."""
    import cv2

    from edgedet.data.records import DetectionDataset, ImageRecord

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for r in dataset.records:
        image = cv2.imread(str(r.path), cv2.IMREAD_COLOR)
        h, w = image.shape[:2]
        aspect = float(rng.uniform(0.6, 1.8))
        ch, cw = (h, min(w, int(round(h * aspect)))) if aspect * h <= w else (min(h, int(round(w / aspect))), w)
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        boxes = r.boxes_xyxy - np.array([x0, y0, x0, y0], np.float32)
        clipped = np.clip(boxes, 0, np.array([cw, ch, cw, ch], np.float32))
        area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # noqa: E731
        keep = area(clipped) >= 0.5 * np.maximum(area(boxes), 1e-6)
        path = folder / f"{Path(r.path).stem}.jpg"
        cv2.imwrite(str(path), image[y0:y0 + ch, x0:x0 + cw])
        records.append(ImageRecord(r.image_id, path, cw, ch, clipped[keep], r.labels[keep]))
    return DetectionDataset(records, dataset.class_names, dataset.category_ids, dataset.transforms, dataset.name + "-mixed")


def score_rows(model, dataset, experiment, ckpt_path: Path, out: Path, rebuild: bool, calib_data) -> Dict[str, Dict[str, float]]:
    """The table's rows for one dataset (engines exported once into `out`, reused for another dataset)."""
    from converters import export
    from edgedet.engine.deploy_eval import evaluate_deployed
    from edgedet.engine.evaluator import evaluate
    from edgedet.predictor import TorchDetector, checkpoint_manifest
    from runtime.detector import Detector

    rows: Dict[str, Dict[str, float]] = {}
    rows["training view (edgedet eval)"] = evaluate(model, dataset, progress=False)
    deployed = evaluate_deployed(model, dataset, experiment, progress=False)
    imgsz = tuple(deployed["imgsz"])
    rows[f"deployed view (checkpoint, {imgsz[0]}x{imgsz[1]} letterbox + mask)"] = deployed
    old = checkpoint_manifest(model, experiment, imgsz)
    old.valid_input = ""  # the letterbox without the mask: what exports did before the valid-region input
    rows["old export (letterbox, padding as content)"] = score_detector(TorchDetector(model, old, conf=0.0), dataset)
    for precision in ("fp32", "int8"):
        path = out / f"dino-{precision}.xml"
        if rebuild or not path.exists():
            from edgedet.data import build_dataset

            calib = [r.path for r in build_dataset(calib_data, "train").records[:64]] if precision == "int8" else None
            export(ckpt_path, format="openvino", precision=precision, output=path, calib=calib, calib_images=64,
                   overwrite=True)
        with Detector(path, conf=0.0) as det:
            rows[f"OpenVINO {precision} ({det.manifest.msda}, {imgsz[0]}x{imgsz[1]})"] = score_detector(det, dataset)
    return rows


def print_rows(title: str, rows: Dict[str, Dict[str, float]]) -> float:
    base = rows["training view (edgedet eval)"]["mAP"]
    print(title)
    print(f"{'row':<58} {'mAP':>7} {'mAP50':>7} {'gap':>8}")
    for name, m in rows.items():
        print(f"{name:<58} {m['mAP']:7.4f} {m['mAP50']:7.4f} {m['mAP'] - base:+8.4f}")
    fp32 = next(m for n, m in rows.items() if n.startswith("OpenVINO fp32"))
    return fp32["mAP"] - base


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=900.0, help="training time budget (the cosine is fitted to it)")
    p.add_argument("--epochs", type=int, default=30, help="most epochs (fit_to_budget shortens them)")
    p.add_argument("--split", default="test")
    p.add_argument("--output", default="runs/bench_gap")
    p.add_argument("--checkpoint", default="", help="skip training: score this checkpoint")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--mixed-aspect", action="store_true", help="also score crops of the split at aspect ratios 0.6-1.8")
    args = p.parse_args()
    if not (BCCD / "Annotations").is_dir():
        sys.exit(f"BCCD not found at {BCCD} (../shared/data/bccd beside the repository)")
    import torch

    from edgedet.data import build_dataset
    from edgedet.engine.checkpoint import checkpoint_config, load_checkpoint, load_model
    from edgedet.engine.trainer import train

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    if args.checkpoint:
        ckpt_path = Path(args.checkpoint)
    else:
        cfg = load_experiment(REPO / "configs" / "bccd_dino.yaml")
        cfg = replace(cfg, data=replace(cfg.data, root=str(BCCD)),
                      train=replace(cfg.train, output_dir=args.output, epochs=args.epochs, time_budget_s=args.budget_s,
                                    fit_to_budget=True, eval_every=0))
        last = train(cfg, progress=False)
        ckpt_path = last.parent / "best.pth" if (last.parent / "best.pth").exists() else last
    train_s = time.time() - t0
    cfg = checkpoint_config(load_checkpoint(ckpt_path))
    experiment = to_dict(cfg)
    model = load_model(ckpt_path).eval()
    dataset = build_dataset(replace(cfg.data, root=str(BCCD)), args.split)
    calib_data = replace(cfg.data, root=str(BCCD))
    out = Path(args.output) / "export"
    rows = score_rows(model, dataset, experiment, ckpt_path, out, rebuild=True, calib_data=calib_data)
    print(f"machine: {machine()}")
    print(f"{ckpt_path} (trained {train_s / 60:.1f} min)")
    gap = print_rows(f"BCCD {args.split} ({len(dataset.records)} images, all 640x480)", rows)
    print(f"target |OpenVINO FP32 - training view| <= 0.005: {'met' if abs(gap) <= 0.005 else 'NOT met'} ({gap:+.4f})")
    summary: Dict[str, Any] = {
        "machine": machine(), "split": args.split, "images": len(dataset.records), "train_min": round(train_s / 60, 1),
        "rows": {n: {"mAP": round(m["mAP"], 4), "mAP50": round(m["mAP50"], 4)} for n, m in rows.items()},
        "fp32_gap": round(gap, 4), "target_met": bool(abs(gap) <= 0.005)}
    if args.mixed_aspect:
        mixed = mixed_aspect(dataset, Path(args.output) / "mixed_aspect")
        mrows = score_rows(model, mixed, experiment, ckpt_path, out, rebuild=False, calib_data=calib_data)
        mgap = print_rows(f"BCCD {args.split} cropped to aspect ratios 0.6-1.8 ({len(mixed.records)} images)", mrows)
        summary["mixed_aspect"] = {"rows": {n: {"mAP": round(m["mAP"], 4), "mAP50": round(m["mAP50"], 4)}
                                            for n, m in mrows.items()}, "fp32_gap": round(mgap, 4)}
    print(json.dumps(summary))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
