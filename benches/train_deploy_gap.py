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
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgedet.config import load_experiment, to_dict  # noqa: E402

BCCD = REPO.parent / "shared" / "data" / "bccd"


def machine() -> str:
    """CPU model and the ISA flags that decide speed here (lscpu), and the load."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown CPU"
    facts = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(facts.get("Flags", "").split())
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    return f"{facts.get('Model name', '?').strip()} | {' '.join(isa)} | load {' '.join(load)}"


def score_detector(detector, dataset) -> Dict[str, float]:
    """mAP of a runtime-style detector (`.batch(frames)`) over the dataset's records."""
    import cv2

    from edgedet.engine.evaluator import coco_metrics

    results: List[Dict[str, Any]] = []
    for r in dataset.records:
        frame = cv2.imread(str(r.path), cv2.IMREAD_COLOR)
        results.extend(detector.batch([frame])[0].to_coco(r.image_id, dataset.category_ids))
    return coco_metrics(dataset.coco_gt(), results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=900.0, help="training time budget (the cosine is fitted to it)")
    p.add_argument("--epochs", type=int, default=30, help="most epochs (fit_to_budget shortens them)")
    p.add_argument("--split", default="test")
    p.add_argument("--output", default="runs/bench_gap")
    p.add_argument("--checkpoint", default="", help="skip training: score this checkpoint")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if not (BCCD / "Annotations").is_dir():
        sys.exit(f"BCCD not found at {BCCD} (../shared/data/bccd beside the repository)")
    import torch

    from converters import export
    from edgedet.data import build_dataset
    from edgedet.engine.checkpoint import checkpoint_config, load_checkpoint, load_model
    from edgedet.engine.deploy_eval import evaluate_deployed
    from edgedet.engine.evaluator import evaluate
    from edgedet.engine.trainer import train
    from edgedet.predictor import TorchDetector, checkpoint_manifest
    from runtime.detector import Detector

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
    rows: Dict[str, Dict[str, float]] = {}
    rows["training view (edgedet eval)"] = evaluate(model, dataset, progress=False)
    deployed = evaluate_deployed(model, dataset, experiment, progress=False)
    imgsz = tuple(deployed["imgsz"])
    rows[f"deployed view (checkpoint, {imgsz[0]}x{imgsz[1]} letterbox + mask)"] = deployed
    old = checkpoint_manifest(model, experiment, imgsz)
    old.valid_input = ""  # the letterbox without the mask: what exports did before the valid-region input
    rows["old export (letterbox, padding as content)"] = score_detector(TorchDetector(model, old, conf=0.0), dataset)
    out = Path(args.output) / "export"
    calib = [r.path for r in build_dataset(replace(cfg.data, root=str(BCCD)), "train").records[:64]]
    for precision in ("fp32", "int8"):
        path = export(ckpt_path, format="openvino", precision=precision, output=out / f"dino-{precision}.xml",
                      calib=calib if precision == "int8" else None, calib_images=64, overwrite=True)
        with Detector(path, conf=0.0) as det:
            rows[f"OpenVINO {precision} ({det.manifest.msda}, {imgsz[0]}x{imgsz[1]})"] = score_detector(det, dataset)
    base = rows["training view (edgedet eval)"]["mAP"]
    print(f"machine: {machine()}")
    print(f"BCCD {args.split} ({len(dataset.records)} images), {ckpt_path} (trained {train_s / 60:.1f} min)")
    print(f"{'row':<58} {'mAP':>7} {'mAP50':>7} {'gap':>8}")
    for name, m in rows.items():
        print(f"{name:<58} {m['mAP']:7.4f} {m['mAP50']:7.4f} {m['mAP'] - base:+8.4f}")
    fp32 = next(m for n, m in rows.items() if n.startswith("OpenVINO fp32"))
    gap = fp32["mAP"] - base
    print(f"target |OpenVINO FP32 - training view| <= 0.005: {'met' if abs(gap) <= 0.005 else 'NOT met'} ({gap:+.4f})")
    summary = {"machine": machine(), "split": args.split, "images": len(dataset.records), "train_min": round(train_s / 60, 1),
               "imgsz": list(imgsz), "rows": {n: {"mAP": round(m["mAP"], 4), "mAP50": round(m["mAP50"], 4)} for n, m in rows.items()},
               "fp32_gap": round(gap, 4), "target_met": bool(abs(gap) <= 0.005)}
    print(json.dumps(summary))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
