"""Train the embedded demo detector and store it as `edgedet/assets/demo_detector.pth`.

    OMP_NUM_THREADS=2 python scripts/train_demo_model.py                 # all four stages
    OMP_NUM_THREADS=2 python scripts/train_demo_model.py --from runs/demo_stage1/best.pth   # stages 2 to 4
    OMP_NUM_THREADS=2 python scripts/train_demo_model.py --from old_demo_detector.pth --stages 4

Four stages with the normal engine (`edgedet.engine.trainer.train`), each starting from the last:
1. `demo_detector_stage1.yaml`: from scratch on plain shapes (256 px squares), where a small DETR
   learns what the shapes are quickly (450 steps, ~8 minutes on 2 cores);
2. `demo_detector.yaml`: on the camera-like world at the demo's geometry (occlusion, motion blur,
   changing light, shapes cut by the border), a cosine schedule of 1800 steps that its time budget
   stopped after 1200 (~53 minutes on one core while other jobs held the other);
3. `demo_detector_stage3.yaml`: the same data, 500 steps with a low learning rate decaying to zero;
4. `demo_detector_stage4.yaml`: twice the camera-like data, a fresh cosine fitted to a 90-minute
   budget (`train.fit_to_budget`), so it decays to its end on time (13 epochs, 2600 steps, 80 min
   on 2 cores; demo video mAP@0.5 0.924 -> 0.951 with the demo's dedup, mAP 0.778 / 0.792).
Then keeps only what inference needs (the EMA weights in float16, the config, the metrics and the
training times of every stage, carried over from a `--from` asset): a file of a few MB.
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
    parser.add_argument("--stage4-config", type=Path, default=ASSETS / "demo_detector_stage4.yaml")
    parser.add_argument("--from", dest="start", type=Path, default=None,
                        help="skip stage 1: start the first of --stages from this checkpoint")
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3, 4], choices=[1, 2, 3, 4],
                        help="which stages to run, in order (without 1, --from is needed)")
    parser.add_argument("--set", action="append", default=[], help="stage-2 config override, e.g. train.epochs=10")
    parser.add_argument("--output", type=Path, default=ASSETS / "demo_detector.pth")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if 1 not in args.stages and args.start is None:
        parser.error("--from CHECKPOINT is needed when stage 1 is not run")
    times = earlier_stage_times(args.start) if args.start is not None else {}
    start = args.start
    if 1 in args.stages:
        t0 = time.perf_counter()
        start = best_or_last(train(load_experiment(args.stage1_config)))
        times["stage1_s"] = round(time.perf_counter() - t0, 1)
    configs = {2: (args.config, args.set), 3: (args.stage3_config, []), 4: (args.stage4_config, [])}
    for stage in (s for s in args.stages if s != 1):
        config, extra = configs[stage]
        t0 = time.perf_counter()
        start = best_or_last(train(load_experiment(config), overrides=[f"model.weights={start}", *extra]))
        times[f"stage{stage}_s"] = round(time.perf_counter() - t0, 1)
    write_slim(start, args.output, times)

def earlier_stage_times(checkpoint: Path) -> dict:
    """The stage times a demo asset recorded (so a run continuing from it reports the whole training)."""
    metrics = load_checkpoint(checkpoint).get("metrics") or {}
    return {k: v for k, v in metrics.items() if k.startswith("stage") and k.endswith("_s")}


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
