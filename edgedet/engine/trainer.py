"""The training loop: `train(cfg)` builds everything from an ExperimentConfig and runs the epochs.

Per epoch: train (AMP, grad clipping, EMA, per-iteration LR schedule, tqdm bar with live losses),
evaluate every `eval_every` epochs, append a JSON line to `metrics.jsonl`, redraw `curves.png`
and save `last.pth` / `best.pth`. Resuming restores model, optimiser, scheduler, EMA and RNG
states, so a resumed run continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edgedet.config import ExperimentConfig, apply_overrides
from edgedet.engine import checkpoint as ckpt_io
from edgedet.engine import distributed as ddp
from edgedet.engine.ema import ModelEMA
from edgedet.engine.evaluator import evaluate
from edgedet.engine.optim import build_optimizer, build_scheduler
from edgedet.engine.plots import plot_curves

log = logging.getLogger(__name__)
PLOT_EVERY_S = 30.0  # redraw curves.png at most this often (and after the last epoch)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _targets_to(targets, device: torch.device):
    return [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]


class _Stopwatch:
    """Wall-clock budget shared by the whole run (0 = unlimited)."""

    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.monotonic(), budget_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def expired(self) -> bool:
        return self.budget_s > 0 and self.elapsed() >= self.budget_s


def train_one_epoch(model: nn.Module, criterion: nn.Module, loader, optimizer, scheduler, device: torch.device,
                    cfg: ExperimentConfig, epoch: int, ema: Optional[ModelEMA] = None, scaler=None,
                    clock: Optional[_Stopwatch] = None, progress: bool = True,
                    run_eta: Optional[Callable[[int], str]] = None) -> Tuple[Dict[str, float], int, bool]:
    """One pass over `loader` (capped by max_iters_per_epoch). Returns (mean of every loss over the
    epoch, weighted total under `loss`; iterations run; whether the time budget stopped it).
    run_eta(iterations done this epoch) -> the whole run's remaining time, shown on the bar."""
    tc = cfg.train
    model.train()
    criterion.train()
    n_iters = len(loader) if tc.max_iters_per_epoch <= 0 else min(len(loader), tc.max_iters_per_epoch)
    sums: Dict[str, float] = defaultdict(float)
    amp_dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    stopped, it = False, 0
    bar = tqdm(total=n_iters, desc=f"epoch {epoch}", leave=False, disable=not progress)
    for it, (images, mask, targets) in enumerate(loader, start=1):
        images = images.to(device, non_blocking=True)
        mask = mask.to(device, non_blocking=True) if mask is not None else None
        targets = _targets_to(targets, device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=tc.amp):
            outputs = model(images, mask, targets)
        losses = criterion(outputs, targets)  # losses in float32, outside autocast
        total = criterion.total_loss(losses)
        if not math.isfinite(total.item()):
            raise RuntimeError(f"loss is {total.item()} at epoch {epoch} iteration {it}; "
                               "lower train.lr or raise train.clip_max_norm and restart")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
        else:
            total.backward()
        if tc.clip_max_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), tc.clip_max_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(ckpt_io.unwrap(model))
        values = {"loss": total.item(), **{k: float(v.detach()) for k, v in losses.items()}}
        for k, v in values.items():
            sums[k] += v
        bar.update(1)
        bar.set_postfix({"loss": f"{sums['loss'] / it:.3f}",
                         **{k[5:]: f"{values[k]:.3f}" for k in ("loss_ce", "loss_bbox", "loss_giou") if k in values},
                         **({"run ETA": run_eta(it)} if run_eta is not None else {})})
        if it >= n_iters:
            break
        if clock is not None and ddp.any_process(clock.expired(), device):
            stopped = True
            break
    bar.close()
    means = {k: v / max(it, 1) for k, v in sums.items()}
    return ddp.reduce_dict(means, device), it, stopped or (clock is not None and ddp.any_process(clock.expired(), device))


def _seed_epoch(loader, seed: int, epoch: int) -> None:
    """Make the epoch's data order a function of (seed, epoch) only, so a resumed run sees the
    same batches as an uninterrupted one."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    generator = getattr(loader, "generator", None)
    if generator is not None:
        generator.manual_seed(seed * 1000 + epoch)


def _sync_classes(cfg: ExperimentConfig, dataset) -> ExperimentConfig:
    """The model predicts the dataset's classes: num_classes / class_names follow the dataset."""
    names = list(dataset.class_names)
    if cfg.model.num_classes != len(names) or list(cfg.model.class_names) != names:
        log.info("model.num_classes set to %d from the dataset", len(names))
        cfg = replace(cfg, model=replace(cfg.model, num_classes=len(names), class_names=names))
    return cfg


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _budget_shortfall(tc, clock: _Stopwatch, epochs_done: int, start_epoch: int) -> Optional[str]:
    """A warning when the run's pace will not fit train.time_budget_s, with the --epochs that would."""
    if tc.time_budget_s <= 0 or epochs_done <= 0:
        return None
    per_epoch = clock.elapsed() / epochs_done
    total = tc.epochs - start_epoch
    if per_epoch * total <= tc.time_budget_s:
        return None
    fit = max(1, int(tc.time_budget_s // per_epoch))
    return (f"at {_duration(per_epoch)} per epoch the {total} epochs need ~{_duration(per_epoch * total)} but "
            f"train.time_budget_s is {_duration(tc.time_budget_s)}: training will stop near epoch {start_epoch + fit} "
            f"and the {tc.scheduler} schedule, fitted to {tc.epochs} epochs, will not finish; --epochs {start_epoch + fit} "
            "fits the budget")


def _append_metrics(path: Path, row: Dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def train(cfg: ExperimentConfig, resume: Optional[str] = None, overrides: Sequence[str] = (),
          progress: bool = True, datasets: Optional[Tuple] = None) -> Path:
    """Train `cfg` (with dotted `overrides` applied); returns the path of the last checkpoint.

    resume: a checkpoint from an earlier run of the same model; training continues after its epoch.
    datasets: optional (train, val) DetectionDatasets instead of building them from `cfg.data`.
    Under torchrun every process trains its shard; rank 0 evaluates, logs and saves.
    """
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    tc = cfg.train
    info = ddp.init_distributed(tc.device)
    device = ddp.device_for(info, tc.device)
    out_dir = Path(tc.output_dir)
    resume_ckpt = ckpt_io.load_checkpoint(resume) if resume else None
    if resume_ckpt is not None:
        ckpt_io.check_same_model(resume_ckpt, cfg.model.name, resume)
    seed_everything(tc.seed + info.rank)

    from edgedet.data import build_dataloader, build_dataset
    from edgedet.models import create_model_from_config

    train_ds, val_ds = datasets if datasets is not None else (build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val"))
    cfg = _sync_classes(cfg, train_ds)
    model = create_model_from_config(cfg.model).to(device)
    criterion = model.build_criterion().to(device)
    loader = build_dataloader(train_ds, batch_size=tc.batch_size, shuffle=True, num_workers=cfg.data.num_workers,
                              distributed=info.enabled, seed=tc.seed)
    iters_per_epoch = len(loader) if tc.max_iters_per_epoch <= 0 else min(len(loader), tc.max_iters_per_epoch)
    optimizer = build_optimizer(model, tc)
    scheduler = build_scheduler(optimizer, tc, iters_per_epoch)
    ema = ModelEMA(model, tc.ema_decay) if tc.ema else None
    scaler = torch.amp.GradScaler("cuda") if tc.amp and device.type == "cuda" else None
    start_epoch, best = 0, -1.0
    if resume_ckpt is not None:
        ckpt_io.load_state_checked(model, resume_ckpt["model"], f"checkpoint {resume}")
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        if ema is not None and "ema" in resume_ckpt:
            ema.load_state_dict(resume_ckpt["ema"])
        if scaler is not None and "scaler" in resume_ckpt:
            scaler.load_state_dict(resume_ckpt["scaler"])
        start_epoch = int(resume_ckpt["epoch"]) + 1
        best = float(resume_ckpt.get("best_map", -1.0))
        ckpt_io.set_rng_state(resume_ckpt["rng"])  # rank 0's state: every rank continues from it
        log.info("resumed from %s at epoch %d", resume, start_epoch)
    train_model = ddp.wrap_model(model, info, device)

    metrics_path, last_path = out_dir / "metrics.jsonl", out_dir / "last.pth"
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume_ckpt is None:  # a fresh run: results of an earlier run in this folder would mislead
            for stale in (metrics_path, out_dir / "best.pth"):
                if stale.exists():
                    log.warning("fresh run: removing %s left by an earlier run", stale)
                    stale.unlink()
    clock = _Stopwatch(tc.time_budget_s)
    epoch, last_plot = start_epoch - 1, time.monotonic()
    run_iters, done_before = (tc.epochs - start_epoch) * iters_per_epoch, 0

    def run_eta(it: int) -> str:  # the whole run's remaining time at its pace so far (evaluations included)
        done = done_before + it
        left = clock.elapsed() / done * (run_iters - done)
        return _duration(min(left, tc.time_budget_s - clock.elapsed()) if tc.time_budget_s > 0 else left)

    for epoch in range(start_epoch, tc.epochs):
        _seed_epoch(loader, tc.seed, epoch)
        losses, n_iters, stopped = train_one_epoch(train_model, criterion, loader, optimizer, scheduler, device, cfg,
                                                   epoch, ema, scaler, clock, progress and info.is_main, run_eta)
        done_before += n_iters
        row = {"epoch": epoch, "iters": n_iters, "time_s": round(clock.elapsed(), 2),
               "lr": optimizer.param_groups[-1]["lr"], **{f"train_{k}": v for k, v in losses.items()}}
        last_epoch = epoch == tc.epochs - 1 or stopped
        if info.is_main and (last_epoch or (tc.eval_every > 0 and (epoch + 1) % tc.eval_every == 0)):
            eval_model = ema.module if ema is not None else model
            val = evaluate(eval_model, val_ds, tc.batch_size, device, progress=progress)
            row.update({f"val_{k}": v for k, v in val.items()})
        ddp.barrier()
        if info.is_main:
            _append_metrics(metrics_path, row)
            log.info("epoch %d/%d: loss %.4f%s | elapsed %s, run ETA %s", epoch + 1, tc.epochs, losses.get("loss", float("nan")),
                     f", mAP {row['val_mAP']:.4f}, mAP50 {row['val_mAP50']:.4f}" if "val_mAP" in row else "",
                     _duration(clock.elapsed()), run_eta(0) if done_before and not last_epoch else "0m00s")
            if epoch == start_epoch and not last_epoch:
                shortfall = _budget_shortfall(tc, clock, 1, start_epoch)
                if shortfall:
                    log.warning("%s", shortfall)
            is_best = "val_mAP" in row and row["val_mAP"] > best
            best = max(best, row.get("val_mAP", best))
            state = dict(optimizer=optimizer, scheduler=scheduler, ema=ema, scaler=scaler, metrics=row, best_map=best)
            ckpt_io.save_checkpoint(last_path, model, cfg, epoch, **state)
            if is_best:
                ckpt_io.save_checkpoint(out_dir / "best.pth", model, cfg, epoch, **state)
            if last_epoch or time.monotonic() - last_plot > PLOT_EVERY_S:
                plot_curves(metrics_path, out_dir / "curves.png")
                last_plot = time.monotonic()
        ddp.barrier()
        if stopped:
            where = (f"in epoch {epoch + 1}/{tc.epochs} after {n_iters} of {iters_per_epoch} iterations (mid-epoch)"
                     if n_iters < iters_per_epoch else f"after epoch {epoch + 1}/{tc.epochs}")
            log.warning("time budget of %s reached %s: the %s schedule stopped at lr %.3g, not its end; "
                        "lower --epochs to fit the budget", _duration(tc.time_budget_s), where, tc.scheduler,
                        optimizer.param_groups[-1]["lr"])
            break
    if info.is_main and not last_path.exists():  # nothing to train (resumed at the final epoch)
        ckpt_io.save_checkpoint(last_path, model, cfg, epoch, optimizer=optimizer, scheduler=scheduler, ema=ema)
    return last_path


__all__ = ["train", "train_one_epoch", "seed_everything"]
