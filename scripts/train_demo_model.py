"""Train the embedded demo detector and store it as `edgedet/assets/demo_detector.pth`.

    python scripts/train_demo_model.py [--set train.time_budget_s=600]

Trains `edgedet/assets/demo_detector.yaml` with the normal engine, then keeps only what
inference needs (the EMA weights in float16 and the config), which makes a file of a few MB.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

import edgedet
from edgedet.config import load_experiment
from edgedet.engine.checkpoint import load_checkpoint
from edgedet.engine.trainer import train

ASSETS = Path(edgedet.__file__).parent / "assets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ASSETS / "demo_detector.yaml")
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. train.epochs=10")
    parser.add_argument("--output", type=Path, default=ASSETS / "demo_detector.pth")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_experiment(args.config)
    last = train(cfg, overrides=args.set)
    best = last.with_name("best.pth")
    ckpt = load_checkpoint(best if best.is_file() else last)
    weights = ckpt.get("ema") or ckpt["model"]
    if isinstance(weights, dict) and "module" in weights:  # EMA state saved as {"module": ..., "updates": ...}
        weights = weights["module"]
    slim = {
        "format": ckpt["format"],
        "model": {k: (v.half() if v.is_floating_point() else v) for k, v in weights.items()},
        "config": ckpt["config"],
        "edgedet_version": edgedet.__version__,
        "epoch": ckpt["epoch"],
        "metrics": ckpt.get("metrics", {}),
    }
    torch.save(slim, args.output)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB), metrics {slim['metrics']}")


if __name__ == "__main__":
    main()
