"""Benchmark: convergence of DETR, DAB-DETR, Deformable DETR, DINO and Co-DINO at an equal training budget.

    python benches/convergence.py                                   # every model, both datasets, 6 min each
    python benches/convergence.py --budget-min 2 --models detr,dino --datasets synthetic
    python benches/convergence.py --epochs 12 --budget-min 0        # a fixed number of epochs, no time cap
    python benches/convergence.py --quick --models detr,dino        # smoke run: a few iterations

Every model trains on the same data with the same small architecture and recipe (see `_recipes.py`) and
is scored with COCO mAP / mAP@0.5 after every epoch. In budget mode a short timing of real training
steps sizes each model's epoch count so that its cosine LR schedule ends when its budget does; when
fewer than `--min-evals` full epochs fit, epochs are shortened to a fixed number of iterations so the
curve still has points (the plot's x axis always counts passes over the training set).
Writes `convergence.png`, `results.json` and one run folder per (dataset, model) under `--out`; prints a
table and, as the last line, one JSON object with the same figures.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _recipes import DATASETS, MODELS, SHARED, experiment, parse_list  # noqa: E402

from edgedet.config import ExperimentConfig  # noqa: E402
from edgedet.data import build_dataloader, build_dataset  # noqa: E402
from edgedet.data.records import DetectionDataset  # noqa: E402
from edgedet.engine.plots import read_metrics  # noqa: E402
from edgedet.engine.trainer import seed_everything, train  # noqa: E402
from edgedet.models import create_model_from_config  # noqa: E402

log = logging.getLogger("convergence")
BUDGET_MARGIN = 0.9  # share of the budget planned for; data loading and checkpoint saving take the rest
QUICK = dict(epochs=2, iters=2, synthetic_train=16, synthetic_val=8, synthetic_size=96, bccd_size=128, val_images=6)


def subset(ds: DetectionDataset, n: int) -> DetectionDataset:
    """The first `n` images of `ds` (same classes and transforms); `ds` itself when n <= 0 or n >= len."""
    if n <= 0 or n >= len(ds):
        return ds
    return DetectionDataset(ds.records[:n], ds.class_names, ds.category_ids, ds.transforms, name=f"{ds.name}[:{n}]")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously: wait before reading the clock


def time_steps(cfg: ExperimentConfig, train_ds, val_ds, steps: int = 3) -> Tuple[float, float]:
    """(seconds per training step, seconds per evaluation batch) on real batches; the first step warms up."""
    seed_everything(cfg.train.seed)
    device = torch.device(cfg.train.device)
    model = create_model_from_config(cfg.model).to(device)
    criterion = model.build_criterion().to(device)
    opt = torch.optim.AdamW(model.parameters(), cfg.train.lr, weight_decay=cfg.train.weight_decay)
    bs = cfg.train.batch_size
    times = []
    for i, (images, mask, targets) in enumerate(build_dataloader(train_ds, bs, shuffle=False, num_workers=0)):
        images, mask = images.to(device), mask.to(device)
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        t0 = time.perf_counter()
        loss = criterion.total_loss(criterion(model(images, mask, targets), targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if i + 1 >= steps:
            break
    model.eval()
    images, mask, _ = next(iter(build_dataloader(val_ds, bs, shuffle=False, num_workers=0)))
    with torch.no_grad():
        t0 = time.perf_counter()
        model(images.to(device), mask.to(device))
        _sync(device)
        t_eval = time.perf_counter() - t0
    timed = sorted(times[1:] or times)
    return timed[len(timed) // 2], t_eval


def plan(full_ipe: int, n_val_batches: int, budget_s: float, t_step: float, t_eval: float,
         min_evals: int) -> Tuple[int, int]:
    """(epochs, iterations per epoch; 0 = full) that fill `budget_s`, with at least `min_evals` evaluations."""
    eval_s = n_val_batches * t_eval + 1.0  # + COCOeval
    usable = budget_s * BUDGET_MARGIN
    full_epochs = int(usable // (full_ipe * t_step + eval_s))
    if full_epochs >= min_evals:
        return full_epochs, 0
    iters = int((usable / min_evals - eval_s) // t_step)
    if iters < 1:
        log.warning("budget %.0f s is too short: %d evaluations alone take about %.0f s", budget_s, min_evals,
                    min_evals * eval_s)
    return min_evals, max(1, min(full_ipe, iters))


def _train_overrides(args) -> Dict:
    return dict(batch_size=args.batch_size, lr=args.lr, device=args.device)


def run_one(model: str, ds_name: str, data_cfg, train_ds, val_ds, args) -> Dict:
    """Train one model on one dataset; -> its summary (final/best mAP, curve, epochs, seconds)."""
    out_dir = Path(args.out) / ds_name / model
    budget_s = args.budget_min * 60.0
    full_ipe = math.ceil(len(train_ds) / args.batch_size)
    n_val_batches = math.ceil(len(val_ds) / args.batch_size)
    iters_cap, t_step, t_eval, calib_s = args.iters_per_epoch, 0.0, 0.0, 0.0
    if args.epochs > 0:
        epochs = args.epochs
    else:
        cfg0 = experiment(model, data_cfg, out_dir, 1, 0.0, overrides=_train_overrides(args))
        cfg0.model.num_classes, cfg0.model.class_names = len(train_ds.class_names), list(train_ds.class_names)
        t0 = time.monotonic()
        t_step, t_eval = time_steps(cfg0, train_ds, val_ds)
        calib_s = time.monotonic() - t0
        ipe = iters_cap if iters_cap > 0 else full_ipe
        epochs, planned_cap = plan(ipe, n_val_batches, budget_s, t_step, t_eval, args.min_evals)
        iters_cap = planned_cap or iters_cap
    cfg = experiment(model, data_cfg, out_dir, epochs, budget_s, iters_cap,
                     overrides=_train_overrides(args))
    timing = f"{t_step:.2f} s/step, {t_eval:.2f} s/eval batch -> " if t_step > 0 else ""
    log.info("%s / %s: %s%d epochs of %s iterations", ds_name, model, timing, epochs, iters_cap or f"all {full_ipe}")
    t0 = time.monotonic()
    last = train(cfg, progress=not args.no_progress, datasets=(train_ds, val_ds))
    seconds = time.monotonic() - t0
    rows = read_metrics(last.parent / "metrics.jsonl")
    if not args.keep_checkpoints:
        for ckpt in last.parent.glob("*.pth"):
            ckpt.unlink()
    seen, curve = 0, []
    for r in rows:
        seen += r["iters"]
        if "val_mAP" in r:
            curve.append({"epoch": round(seen / full_ipe, 3), "mAP": round(r["val_mAP"], 4),
                          "mAP50": round(r["val_mAP50"], 4), "time_s": r["time_s"]})
    if not curve:
        raise RuntimeError(f"{model} on {ds_name} finished without an evaluation (see {last.parent / 'metrics.jsonl'})")
    return {"mAP": curve[-1]["mAP"], "mAP50": curve[-1]["mAP50"], "best_mAP": max(c["mAP"] for c in curve),
            "epochs": round(seen / full_ipe, 2), "evals": len(curve), "iters": seen, "seconds": round(seconds, 1),
            "step_s": round(t_step, 3), "calib_s": round(calib_s, 1), "curve": curve}


def plot(results: Dict[str, Dict[str, Dict]], titles: Dict[str, str], path: Path) -> Path:
    """One panel per dataset: mAP (solid) and mAP@0.5 (dashed) against passes over the training set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results) or ["(none)"]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
    for ax, ds in zip(axes[0], names):
        for i, (model, r) in enumerate(results.get(ds, {}).items()):
            if "curve" not in r:
                continue
            color = f"C{i}"
            xs = [c["epoch"] for c in r["curve"]]
            ax.plot(xs, [c["mAP"] for c in r["curve"]], marker="o", color=color, label=f"{model} mAP")
            ax.plot(xs, [c["mAP50"] for c in r["curve"]], ls="--", lw=1, color=color, alpha=0.6)
        ax.set_title(f"{titles.get(ds, ds)} (dashed: mAP@0.5)")
        ax.set_xlabel("epoch (passes over the training set)")
        ax.set_ylabel("COCO AP")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def print_table(results: Dict[str, Dict[str, Dict]], skipped: Dict[str, str]) -> None:
    print(f"\n{'dataset':<11}{'model':<17}{'mAP':>8}{'mAP@0.5':>9}{'epochs':>8}{'evals':>6}{'iters':>7}{'seconds':>9}")
    for ds, per_model in results.items():
        for model, r in per_model.items():
            if "error" in r:
                print(f"{ds:<11}{model:<17}  failed: {r['error']}")
                continue
            print(f"{ds:<11}{model:<17}{r['mAP']:>8.4f}{r['mAP50']:>9.4f}{r['epochs']:>8.2f}{r['evals']:>6}"
                  f"{r['iters']:>7}{r['seconds']:>9.1f}")
    for ds, why in skipped.items():
        print(f"{ds:<11}skipped: {why}")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from: {', '.join(MODELS)}")
    p.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, from: {', '.join(DATASETS)}")
    p.add_argument("--budget-min", type=float, default=6.0, help="wall-clock minutes per model and dataset "
                   "(training + per-epoch evaluation; 0 = no cap, needs --epochs). Default 6")
    p.add_argument("--epochs", type=int, default=0, help="fixed number of epochs (default: fill the budget)")
    p.add_argument("--iters-per-epoch", type=int, default=0, help="cap an epoch at this many iterations (0 = all)")
    p.add_argument("--min-evals", type=int, default=4, help="in budget mode, shorten epochs so at least this many "
                   "evaluations fit (default 4)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--synthetic-size", type=int, default=128, help="synthetic image side in pixels")
    p.add_argument("--synthetic-train", type=int, default=200, help="synthetic training images")
    p.add_argument("--synthetic-val", type=int, default=50, help="synthetic evaluation images")
    p.add_argument("--bccd-root", default=str(SHARED / "data" / "bccd"))
    p.add_argument("--bccd-size", type=int, default=256, help="BCCD shorter image side in pixels")
    p.add_argument("--bccd-eval-split", default="val", choices=("val", "test"))
    p.add_argument("--val-images", type=int, default=0, help="evaluate on the first N images only (0 = all)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", default="runs/convergence", help="output folder (default runs/convergence)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's last.pth / best.pth")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny data, 2 epochs of 2 iterations, no time cap")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    args = p.parse_args(argv)
    try:
        args.model_list = parse_list(args.models, MODELS, "model")
        args.dataset_list = parse_list(args.datasets, tuple(DATASETS), "dataset")
    except ValueError as e:
        p.error(str(e))
    if args.quick:
        args.epochs, args.iters_per_epoch, args.budget_min = QUICK["epochs"], QUICK["iters"], 0.0
        args.synthetic_train, args.synthetic_val = QUICK["synthetic_train"], QUICK["synthetic_val"]
        args.synthetic_size, args.bccd_size, args.val_images = QUICK["synthetic_size"], QUICK["bccd_size"], QUICK["val_images"]
    if args.budget_min <= 0 and args.epochs <= 0:
        p.error("--budget-min 0 needs --epochs N (otherwise training would never stop)")
    if args.min_evals < 1:
        p.error("--min-evals must be >= 1")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    results: Dict[str, Dict[str, Dict]] = {}
    skipped: Dict[str, str] = {}
    for ds_name in args.dataset_list:
        spec = DATASETS[ds_name]
        why = spec.missing(args)
        if why:
            print(f"{ds_name}: {why}")
            skipped[ds_name] = why
            continue
        data_cfg = spec.data(args)
        train_ds = build_dataset(data_cfg, "train")
        val_ds = subset(build_dataset(data_cfg, "val"), args.val_images)
        log.info("%s: %d training images, %d evaluation images, classes %s", ds_name, len(train_ds), len(val_ds),
                 train_ds.class_names)
        results[ds_name] = {}
        for model in args.model_list:
            try:
                results[ds_name][model] = run_one(model, ds_name, data_cfg, train_ds, val_ds, args)
            except Exception as e:  # one failing family should not lose the other runs' results
                log.error("%s on %s failed:\n%s", model, ds_name, traceback.format_exc())
                results[ds_name][model] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
    out = Path(args.out)
    png = plot(results, {k: v.title for k, v in DATASETS.items()}, out / "convergence.png")
    summary = {"bench": "convergence", "budget_min": args.budget_min, "epochs": args.epochs, "quick": args.quick,
               "threads": torch.get_num_threads(), "device": args.device, "batch_size": args.batch_size, "lr": args.lr,
               "image_size": {"synthetic": args.synthetic_size, "bccd": args.bccd_size},
               "plot": str(png), "results": results, "skipped": skipped}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print_table(results, skipped)
    print(f"plot: {png}")
    print(json.dumps(summary))
    failed = any("error" in r for per in results.values() for r in per.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
