"""Benchmark: prompted open-set detection (`trex`) on synthetic shapes, with held-out classes.

    python benches/prompted.py                    # 10 min budget
    python benches/prompted.py --budget-min 3 --classes 6 --holdout 2

The last `--holdout` shape classes never appear in training (images holding them are dropped).
Reports COCO mAP50 / mAP on the validation images:
- held-out classes, prompted with ONE visual exemplar per class (a box on another image),
- held-out classes, prompted with their names (text encoder: MiniLM by default),
- seen classes, visual / text prompted, against a closed-set DINO of the same size trained on
  the seen classes for a comparable time,
and per-frame CPU latency of the exported ONNX artifacts through the runtime: the prompted
detector with cached prompts vs the closed-set DINO detector. Prints a table, then one JSON
object as the last line. Training time: 45% TRex, 25% DINO; the rest generates data, evaluates, exports.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

from edgedet.config import DataConfig, ExperimentConfig, TrainConfig
from edgedet.data import DetectionDataset, build_dataloader, build_dataset
from edgedet.engine.checkpoint import load_model
from edgedet.engine.plots import read_metrics
from edgedet.engine.trainer import train as train_engine
from edgedet.models import create_model
from edgedet.models.trex import TRexConfig
from edgedet.models.trex_prompts import evaluate_prompted, find_exemplars, one_shot_prompts

MODEL = dict(backbone="resnet18", backbone_frozen_bn=False, hidden_dim=128, nheads=4, enc_layers=2, dec_layers=2,
             dim_feedforward=512, num_queries=100, num_feature_levels=4, dn_number=50)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-min", type=float, default=10.0, help="total wall-clock budget in minutes")
    p.add_argument("--classes", type=int, default=6, help="synthetic shape classes")
    p.add_argument("--holdout", type=int, default=2, help="classes held out of training (the last ones)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--train-images", type=int, default=800, help="generated before dropping held-out images")
    p.add_argument("--val-images", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--text-encoder", default="minilm", choices=["minilm", "token"])
    p.add_argument("--latency-frames", type=int, default=30)
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "edgedet-bench-prompted"))
    return p.parse_args(argv)


def data_config(args) -> DataConfig:
    s = args.image_size
    return DataConfig(format="synthetic", root=str(Path(args.out) / "data"), synthetic_train_images=args.train_images,
                      synthetic_val_images=args.val_images, synthetic_image_size=s, synthetic_num_classes=args.classes,
                      scales=[s], max_size=s, val_size=s, hflip=0.5)


def without_classes(ds: DetectionDataset, held: set) -> DetectionDataset:
    records = [r for r in ds.records if not held & set(r.labels.tolist())]
    return DetectionDataset(records, ds.class_names, ds.category_ids, ds.transforms, name=ds.name + ":seen")


def train_prompted(args, train, val, seen, live_bn: bool, budget_s: float):
    """TRex through the common engine (sampled visual/text prompts of the seen classes), constant LR
    after warm-up, for `budget_s` seconds -> (model, steps, mean loss of the last epoch)."""
    model_cfg = TRexConfig(name="trex", **{**MODEL, "backbone_frozen_bn": not live_bn}, max_prompts=8, prompt_dim=128,
                           text_encoder=args.text_encoder, prompt_classes=list(seen))
    out = Path(args.out) / "trex"
    train_cfg = TrainConfig(output_dir=str(out), epochs=10**6, batch_size=args.batch_size, lr=args.lr,
                            lr_backbone_mult=1.0, lr_linear_proj_mult=1.0, weight_decay=1e-4, clip_max_norm=0.1,
                            scheduler="step", lr_drop_epoch=10**6, warmup_iters=30, eval_every=0, time_budget_s=budget_s)
    last = train_engine(ExperimentConfig(model=model_cfg, data=data_config(args), train=train_cfg), progress=False,
                        datasets=(train, val))
    rows = read_metrics(out / "metrics.jsonl")
    return load_model(last), sum(r["iters"] for r in rows), rows[-1]["train_loss"]


def train_closed_set(model, dataset, budget_s: float, args) -> int:
    """Plain DINO training for `budget_s` seconds -> steps taken."""
    criterion = model.build_criterion()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    model.train()
    start, step, epoch = time.perf_counter(), 0, 0
    while True:
        for images, mask, targets in build_dataloader(dataset, args.batch_size, shuffle=True, seed=epoch, drop_last=True):
            for g in opt.param_groups:
                g["lr"] = args.lr * min(1.0, (step + 1) / 30)
            loss = criterion.total_loss(criterion(model(images, mask, targets), targets))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            opt.step()
            step += 1
            if time.perf_counter() - start >= budget_s:
                model.eval()
                return step
        epoch += 1


@torch.no_grad()
def closed_set_map(model, dataset, seen) -> dict:
    from pycocotools.cocoeval import COCOeval

    from edgedet.engine.evaluator import predict_coco

    loader = build_dataloader(dataset, 4, shuffle=False)
    results = predict_coco(model, loader, dataset.category_ids, progress=False)
    if not results:
        return {"mAP": 0.0, "mAP50": 0.0}
    gt = dataset.coco_gt()
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.catIds = [dataset.category_ids[c] for c in seen]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"mAP": float(ev.stats[0]), "mAP50": float(ev.stats[1])}


def exemplars(dataset: DetectionDataset, classes):
    """`find_exemplars` -> {class: (record, box xyxy pixels)} for the latency run's prompt images."""
    return {c: (dataset.records[i], dataset.records[i].boxes_xyxy[j]) for c, (i, j) in find_exemplars(dataset, classes).items()}


def latency(args, trex, dino, shots, held, frames) -> dict:
    from converters import export
    from converters.prompted import export_prompted
    from runtime import Detector
    from runtime.prompted import PromptedDetector

    s = args.image_size
    out = Path(args.out) / "artifacts"
    enc_path, det_path = export_prompted(trex, out, imgsz=(s, s), text_prompts=[], overwrite=True)
    dino_path = export(dino, format="onnx", output=out / "dino.onnx", imgsz=(s, s), overwrite=True)
    pd = PromptedDetector(enc_path, det_path)
    for c in held:
        rec, box = shots[c]
        pd.add_prompt_image(cv2.imread(str(rec.path)), boxes=[box], names=trex.config.class_names[c])
    closed = Detector(dino_path)
    times = {"trex": [], "dino": []}
    for i in range(len(frames) + 3):  # interleaved, so load from other processes hits both alike
        f = frames[i % len(frames)]
        for name, fn in (("trex", pd), ("dino", closed)):
            t0 = time.perf_counter()
            fn(f)
            if i >= 3:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    budget_s = args.budget_min * 60
    t_start = time.perf_counter()
    cfg = data_config(args)
    train_all, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    exemplar_set = build_dataset(cfg, "test")
    names = list(train_all.class_names)
    seen = list(range(args.classes - args.holdout))
    held = list(range(args.classes - args.holdout, args.classes))
    train = without_classes(train_all, set(held))

    dino = create_model("dino", **MODEL, num_classes=len(seen), class_names=names[: len(seen)])
    # Same backbone normalisation for both (a family may not honour backbone_frozen_bn).
    live_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in dino.backbone.modules())
    trex, trex_steps, trex_loss = train_prompted(args, train, val, seen, live_bn, 0.45 * budget_s)
    dino_steps = train_closed_set(dino, train, 0.25 * budget_s, args)

    shots = exemplars(exemplar_set, seen + held)
    rows = {}
    with torch.no_grad():
        text = trex.encode_text_prompts(names)
    for split, classes in (("held-out", held), ("seen", seen)):
        rows[f"{split} visual (1 shot)"] = evaluate_prompted(trex, val, one_shot_prompts(trex, exemplar_set, classes), classes)
        rows[f"{split} text"] = evaluate_prompted(trex, val, text[classes], classes)
    rows["seen closed-set DINO"] = closed_set_map(dino, val, seen)
    frames = [cv2.imread(str(r.path)) for r in val.records[: args.latency_frames]]
    lat = latency(args, trex, dino, shots, held, frames)

    print(f"\nprompted detection, {args.classes} classes ({len(held)} held out: {', '.join(names[c] for c in held)}), "
          f"{len(train)} training images, TRex {trex_steps} steps, DINO {dino_steps} steps, "
          f"backbone BatchNorm {'live' if live_bn else 'frozen'}")
    print(f"{'evaluation':<28}{'mAP50':>8}{'mAP':>8}")
    for name, m in rows.items():
        print(f"{name:<28}{m['mAP50']:>8.3f}{m['mAP']:>8.3f}")
    ratio = lat["trex"] / lat["dino"]
    print(f"latency ms/frame (ONNX Runtime CPU, {args.image_size}px): prompted {lat['trex']:.1f}, "
          f"closed-set {lat['dino']:.1f}, ratio {ratio:.2f}")
    result = {
        "bench": "prompted", "budget_min": args.budget_min, "classes": args.classes, "held_out": [names[c] for c in held],
        "train_images": len(train), "trex_steps": trex_steps, "dino_steps": dino_steps,
        "final_loss": trex_loss,  # mean over TRex's last epoch
        **{k.replace(" ", "_").replace("(", "").replace(")", "") + "_" + m: round(v[m], 4)
           for k, v in rows.items() for m in ("mAP50", "mAP")},
        "latency_ms_prompted": round(lat["trex"], 2), "latency_ms_closed_set": round(lat["dino"], 2),
        "latency_ratio": round(ratio, 3), "wall_s": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
