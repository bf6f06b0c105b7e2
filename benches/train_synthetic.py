"""Benchmark: train small DETR-family detectors on the synthetic shapes dataset under a CPU time budget.

    python benches/train_synthetic.py                       # Deformable DETR, 15 min
    python benches/train_synthetic.py --budget-min 3 --models deformable_detr,detr

Each model gets the whole budget for training (evaluations included). A short calibration first
times a few steps, so the cosine LR schedule is sized to end when the budget does. Prints a table
of mAP@0.5 and mAP per model and, as the last line, one JSON object with the same figures.
No ImageNet weights: the ResNet-18 backbone trains from scratch (plain BatchNorm).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from edgedet.config import DataConfig, ExperimentConfig, TrainConfig, apply_overrides
from edgedet.engine.plots import read_metrics
from edgedet.engine.trainer import seed_everything, train
from edgedet.models import create_model_from_config, default_config

_SMALL = dict(backbone="resnet18", backbone_frozen_bn=False, hidden_dim=128, nheads=4, enc_layers=2, dec_layers=2,
              dim_feedforward=512, num_queries=100, dropout=0.0)
# Per model: model-config fields and train-config fields on top of the shared ones below.
RECIPES = {
    "deformable_detr": (dict(_SMALL, num_feature_levels=3, enc_n_points=4, dec_n_points=4, with_box_refine=True,
                             two_stage=True), dict(lr=4e-4)),
    "detr": (dict(_SMALL), dict(lr=2e-4)),
    "dab_detr": (dict(_SMALL), dict(lr=2e-4)),
    "dino": (dict(_SMALL, num_feature_levels=3), dict(lr=4e-4)),
}
TRAIN = dict(batch_size=4, lr_backbone_mult=1.0, weight_decay=1e-4, clip_max_norm=0.1, scheduler="cosine",
             warmup_iters=30, seed=0, device="cpu")


def experiment(model: str, args: argparse.Namespace) -> ExperimentConfig:
    model_kw, train_kw = RECIPES[model]
    mcfg = default_config(model)
    mcfg = replace(mcfg, **{k: v for k, v in model_kw.items() if hasattr(mcfg, k)})
    s = args.image_size
    data = DataConfig(format="synthetic", root=str(Path(args.out) / "data"), synthetic_train_images=args.train_images,
                      synthetic_val_images=args.val_images, synthetic_image_size=s, synthetic_num_classes=3,
                      scales=[s], val_size=s, max_size=s, hflip=0.5)
    tc = TrainConfig(output_dir=str(Path(args.out) / model), **{**TRAIN, **train_kw})
    return apply_overrides(ExperimentConfig(model=mcfg, data=data, train=tc), args.set)


def step_seconds(cfg: ExperimentConfig, steps: int = 6) -> float:
    """Fastest wall time of a training step (forward, loss, backward, update) on a random batch.

    The fastest, not the median: on a shared machine a burst of load during calibration would
    otherwise shrink the schedule and leave the budget unused; the time budget still caps the run."""
    seed_everything(cfg.train.seed)
    model = create_model_from_config(replace(cfg.model, num_classes=3))
    criterion = model.build_criterion()
    opt = torch.optim.AdamW(model.parameters(), cfg.train.lr)
    s, bs = cfg.data.synthetic_image_size, cfg.train.batch_size
    images = torch.randn(bs, 3, s, s)
    targets = [{"labels": torch.tensor([0, 1, 2]), "boxes": torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.5, 0.6, 0.25, 0.2],
                                                                        [0.8, 0.3, 0.15, 0.3]])} for _ in range(bs)]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = criterion.total_loss(criterion(model(images, None, targets), targets))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return min(times[1:])  # the first step pays one-off costs


def run_model(model: str, args: argparse.Namespace) -> dict:
    cfg = experiment(model, args)
    budget_s = args.budget_min * 60
    ipe = math.ceil(args.train_images / cfg.train.batch_size)
    if args.iters:
        t_step, iters = 0.0, args.iters
    else:
        t_step = step_seconds(cfg)
        # Evaluations and data loading take a share of the budget, hence the margin.
        iters = max(10, int(budget_s * 0.85 / t_step))
    epochs = max(1, math.ceil(iters / ipe))
    cfg = replace(cfg, train=replace(cfg.train, epochs=epochs, max_iters_per_epoch=math.ceil(iters / epochs),
                                     eval_every=max(1, epochs // 4), time_budget_s=budget_s))
    logging.info("%s: %.2f s/step -> about %d steps in %d epochs", model, t_step, iters, epochs)
    t0 = time.monotonic()
    last = train(cfg, progress=not args.no_progress)
    rows = read_metrics(last.parent / "metrics.jsonl")
    final = [r for r in rows if "val_mAP" in r][-1]
    return {"mAP50": round(final["val_mAP50"], 4), "mAP": round(final["val_mAP"], 4), "epochs": final["epoch"] + 1,
            "iters": sum(r["iters"] for r in rows), "train_s": round(time.monotonic() - t0, 1),
            "step_s": round(t_step, 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget-min", type=float, default=15.0, help="training time per model in minutes (default 15)")
    p.add_argument("--models", default="deformable_detr", help=f"comma-separated, from: {', '.join(RECIPES)}")
    p.add_argument("--iters", type=int, default=0, help="train this many steps (budget still caps it) instead of "
                   "sizing the schedule from a timed calibration")
    p.add_argument("--image-size", type=int, default=128, help="square synthetic image side in pixels")
    p.add_argument("--train-images", type=int, default=500)
    p.add_argument("--val-images", type=int, default=50)
    p.add_argument("--out", default="runs/bench_train_synthetic", help="output folder (data cache, runs)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in RECIPES]
    if unknown:
        p.error(f"no recipe for '{unknown[0]}'. Valid: {', '.join(RECIPES)}")
    results = {m: run_model(m, args) for m in models}
    print(f"\nsynthetic shapes, {args.image_size}px, {args.budget_min:g} CPU min per model ({torch.get_num_threads()} threads)")
    print(f"{'model':<18}{'mAP@0.5':>9}{'mAP':>9}{'iters':>8}{'epochs':>8}{'train s':>9}")
    for m, r in results.items():
        print(f"{m:<18}{r['mAP50']:>9.4f}{r['mAP']:>9.4f}{r['iters']:>8}{r['epochs']:>8}{r['train_s']:>9.1f}")
    print(json.dumps({"bench": "train_synthetic", "budget_min": args.budget_min, "image_size": args.image_size,
                      "threads": torch.get_num_threads(), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
