"""Train the embedded demo detector and store it as `edgedet/assets/demo_detector.pth`.

    OMP_NUM_THREADS=1 python scripts/train_demo_model.py                 # all three stages
    OMP_NUM_THREADS=1 python scripts/train_demo_model.py --from runs/demo_stage1/best.pth   # stages 2 and 3

Three stages with the normal engine (`edgedet.engine.trainer.train`), each starting from the last:
1. `demo_detector_stage1.yaml`: from scratch on plain shapes (256 px squares), where a small DETR
   learns what the shapes are quickly (450 steps, ~8 minutes on 2 cores);
2. `demo_detector.yaml`: on the camera-like world at the demo's geometry (occlusion, motion blur,
   changing light, shapes cut by the border), a cosine schedule of 1800 steps that its time budget
   stopped after 1200 (~53 minutes on one core while other jobs held the other);
3. `demo_detector_stage3.yaml`: the same data, 500 steps with a low learning rate decaying to zero.
Then keeps only what inference needs (the EMA weights in float16, the config, the metrics and the
training times): a file of a few MB.
"""
from __future__ import annotations

import argparse
import copy
import logging
import time
from pathlib import Path

import torch

import edgedet
from edgedet.config import load_experiment
from edgedet.engine.checkpoint import load_checkpoint
from edgedet.engine.trainer import train

ASSETS = Path(edgedet.__file__).parent / "assets"


def best_or_last(last: Path) -> Path:
    best = last.with_name("best.pth")
    return best if best.is_file() else last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1-config", type=Path, default=ASSETS / "demo_detector_stage1.yaml")
    parser.add_argument("--config", type=Path, default=ASSETS / "demo_detector.yaml", help="stage 2")
    parser.add_argument("--stage3-config", type=Path, default=ASSETS / "demo_detector_stage3.yaml")
    parser.add_argument("--from", dest="start", type=Path, default=None,
                        help="skip stage 1: start stage 2 from this checkpoint")
    parser.add_argument("--set", action="append", default=[], help="stage-2 config override, e.g. train.epochs=10")
    parser.add_argument("--output", type=Path, default=ASSETS / "demo_detector.pth")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    times = {}
    start = args.start
    if start is None:
        t0 = time.perf_counter()
        start = best_or_last(train(load_experiment(args.stage1_config)))
        times["stage1_s"] = round(time.perf_counter() - t0, 1)
    for stage, config, extra in ((2, args.config, args.set), (3, args.stage3_config, [])):
        t0 = time.perf_counter()
        start = best_or_last(train(load_experiment(config), overrides=[f"model.weights={start}", *extra]))
        times[f"stage{stage}_s"] = round(time.perf_counter() - t0, 1)
    write_slim(start, args.output, times)

def write_slim(checkpoint: Path, output: Path, times: dict) -> None:
    """Keep what inference needs: the EMA weights in float16, the config, the metrics and training times."""
    ckpt = load_checkpoint(checkpoint)
    weights = ckpt.get("ema") or ckpt["model"]
    if isinstance(weights, dict) and "module" in weights:  # EMA state saved as {"module": ..., "updates": ...}
        weights = weights["module"]
    config = copy.deepcopy(ckpt["config"])
    started_from = config.get("model", {}).pop("weights", None)  # a path of the training machine's; kept as a name
    slim = {
        "format": ckpt["format"],
        "model": {k: (v.half() if v.is_floating_point() else v) for k, v in weights.items()},
        "config": config,
        "edgedet_version": edgedet.__version__,
        "epoch": ckpt["epoch"],
        "metrics": {**ckpt.get("metrics", {}), **times, "torch_threads": torch.get_num_threads(),
                    "started_from": Path(started_from).name if started_from else None},
    }
    torch.save(slim, output)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB), metrics {slim['metrics']}")


if __name__ == "__main__":
    main()
