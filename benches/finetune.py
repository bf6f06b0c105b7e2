"""Benchmark: does starting from pretrained weights help on a small real dataset?

    nice -n 10 python benches/finetune.py                        # 300 steps pre-training, 300 steps per BCCD run
    python benches/finetune.py --pretrain-steps 20 --steps 20    # a quick look

1. Pre-train DINO (the architecture of configs/bccd_dino.yaml) on the synthetic shapes dataset,
   a different dataset with other classes.
2. On BCCD (../shared/data/bccd, VOC), train the same architecture twice with the same CPU budget
   (the same number of optimiser steps, evaluated `--evals` times): fine-tuned from step 1's
   checkpoint (`model.weights`: class heads re-initialised, everything else loaded) and from scratch.
Steps, not seconds, set the budget: on a shared machine wall time says more about the other jobs
than about the runs. Prints a table (val mAP / mAP@0.5 of each run, steps, seconds), draws the val-mAP
curves of both runs into finetune_curves.png, and ends with one JSON line of the same figures.
No ImageNet weights exist offline: "scratch" starts from a random backbone.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edgedet.config import DataConfig, load_experiment  # noqa: E402
from edgedet.engine.plots import read_metrics  # noqa: E402
from edgedet.engine.trainer import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO.parent / "shared" / "data" / "bccd"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain-steps", type=int, default=300, help="optimiser steps of the synthetic pre-training")
    p.add_argument("--steps", type=int, default=300, help="optimiser steps of each BCCD run (the cosine schedule's length)")
    p.add_argument("--evals", type=int, default=3, help="evaluations on the BCCD val split per run (curve points)")
    p.add_argument("--imgsz", type=int, default=256, help="shorter image side (multi-scale: +-32)")
    p.add_argument("--pretrained", default="", help="reuse this pre-trained checkpoint instead of step 1")
    p.add_argument("--data", default=str(BCCD), help="BCCD-style VOC folder")
    p.add_argument("--out", default="runs/bench_finetune", help="output folder")
    return p.parse_args(argv)


def base_config(args: argparse.Namespace):
    """configs/bccd_dino.yaml at `--imgsz`, `--evals` epochs of steps / evals iterations each."""
    cfg = load_experiment(REPO / "configs" / "bccd_dino.yaml")
    s = args.imgsz
    data = replace(cfg.data, root=args.data, scales=[s - 32, s, s + 32], max_size=int(s * 1.5), val_size=s)
    train_cfg = replace(cfg.train, epochs=args.evals, eval_every=1, time_budget_s=0.0,
                        max_iters_per_epoch=math.ceil(args.steps / args.evals), warmup_iters=20)
    return replace(cfg, data=data, train=train_cfg)


def pretrain(args: argparse.Namespace, out: Path) -> Path:
    cfg = base_config(args)
    data = DataConfig(format="synthetic", root=str(out / "synthetic_data"),
                      synthetic_train_images=max(40, 4 * args.pretrain_steps), synthetic_val_images=20,
                      synthetic_image_size=args.imgsz, synthetic_num_classes=3,
                      scales=list(cfg.data.scales), max_size=cfg.data.max_size, val_size=cfg.data.val_size, hflip=0.5)
    train_cfg = replace(cfg.train, output_dir=str(out / "pretrain_synthetic"), epochs=1,
                        max_iters_per_epoch=args.pretrain_steps, eval_every=0)
    return train(replace(cfg, data=data, train=train_cfg), progress=sys.stderr.isatty())


def run(args: argparse.Namespace, out: Path, name: str, weights: str = None) -> dict:
    cfg = base_config(args)
    cfg = replace(cfg, model=replace(cfg.model, weights=weights),
                  train=replace(cfg.train, output_dir=str(out / name)))
    train(cfg, progress=sys.stderr.isatty())
    rows = read_metrics(out / name / "metrics.jsonl")
    evals = [r for r in rows if "val_mAP" in r]
    last = evals[-1]
    return {"mAP": round(last["val_mAP"], 4), "mAP50": round(last["val_mAP50"], 4),
            "best_mAP": round(max(r["val_mAP"] for r in evals), 4), "iters": sum(r["iters"] for r in rows),
            "seconds": rows[-1]["time_s"],
            "curve": [(sum(x["iters"] for x in rows if x["epoch"] <= r["epoch"]), r["val_mAP"]) for r in evals]}


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if not (Path(args.data) / "Annotations").is_dir():
        raise SystemExit(f"BCCD not found at {args.data}; pass --data PATH to a VOC folder")
    out = Path(args.out)
    pretrained = args.pretrained or pretrain(args, out)
    results = {"finetuned": run(args, out, "bccd_finetuned", str(pretrained)), "scratch": run(args, out, "bccd_scratch")}

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        t, m = zip(*r["curve"])
        ax.plot(t, m, marker="o", label=f"{name} (final mAP {r['mAP']:.3f})")
    ax.set_xlabel("optimiser steps on BCCD")
    ax.set_ylabel("val mAP")
    ax.set_title("DINO on BCCD: synthetic pre-training vs scratch", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "finetune_curves.png", dpi=100)

    print(f"{'run':<10} {'mAP':>7} {'mAP50':>7} {'best mAP':>9} {'steps':>6} {'seconds':>8}")
    for name, r in results.items():
        print(f"{name:<10} {r['mAP']:>7.4f} {r['mAP50']:>7.4f} {r['best_mAP']:>9.4f} {r['iters']:>6d} {r['seconds']:>8.0f}")
    print(f"curves: {out / 'finetune_curves.png'}")
    summary = {name: {k: v for k, v in r.items() if k != "curve"} for name, r in results.items()}
    print(json.dumps({"bench": "finetune", "pretrain_steps": args.pretrain_steps, "steps": args.steps,
                      "imgsz": args.imgsz, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
