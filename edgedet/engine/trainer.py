"""The training loop: `train(cfg)` builds everything from an ExperimentConfig and runs the epochs.

Per epoch: train (AMP, grad clipping, EMA, per-iteration LR schedule, tqdm bar with live losses),
evaluate every `eval_every` epochs, append a JSON line to `metrics.jsonl`, redraw `curves.png`
and save `last.pth` / `best.pth`. Resuming restores model, optimiser, scheduler, EMA and RNG
states (each DDP rank its own), so a resumed run continues exactly as an uninterrupted one.
With `model.weights` the run starts from pretrained weights (`edgedet.engine.finetune`: architecture
from the weights, class heads re-initialised, load_report.txt beside the checkpoints).
"""
from __future__ import annotations

import logging
import math
import random
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edgedet.config import ExperimentConfig, apply_overrides
from edgedet.engine import checkpoint as ckpt_io
from edgedet.engine import distributed as ddp
from edgedet.engine import finetune, run_dir
from edgedet.engine.ema import ModelEMA
from edgedet.engine.evaluator import evaluate
from edgedet.engine.optim import build_optimizer, build_scheduler
from edgedet.engine.plots import plot_curves

log = logging.getLogger(__name__)
RUN_OUTPUTS = ("last.pth", "best.pth", "metrics.jsonl", "curves.png", "load_report.txt", "load_report.json")
PLOT_EVERY_S = 30.0  # redraw curves.png at most this often (and after the last epoch)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _targets_to(targets, device: torch.device):
    return [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]


class _Stopwatch:
    """Wall-clock budget shared by the whole run (0 = unlimited); `before_s` is the time a resumed run
    had already trained (saved in last.pth), so a resume continues the budget instead of restarting it."""

    def __init__(self, budget_s: float, before_s: float = 0.0):
        self.start, self.budget_s, self.before_s = time.monotonic(), budget_s, float(before_s)

    def elapsed(self) -> float:
        return self.before_s + time.monotonic() - self.start

    def session(self) -> float:
        """Seconds since this process started (or resumed) training."""
        return time.monotonic() - self.start

    def expired(self) -> bool:
        return self.budget_s > 0 and self.elapsed() >= self.budget_s


def epoch_label(epoch: int, epochs: int) -> str:
    """How every line a user reads names an epoch (bar, summary, errors): 1-based, of the total. `epoch` is the
    0-based index stored in checkpoints and metrics.jsonl."""
    return f"epoch {epoch + 1}/{epochs}"


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
    bar = tqdm(total=n_iters, desc=epoch_label(epoch, tc.epochs), leave=False, disable=not progress)
    for it, (images, mask, targets) in enumerate(loader, start=1):
        images = images.to(device, non_blocking=True)
        mask = mask.to(device, non_blocking=True) if mask is not None else None
        targets = _targets_to(targets, device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=tc.amp):
            outputs = model(images, mask, targets)
        losses = criterion(outputs, targets)  # losses in float32, outside autocast
        total = criterion.total_loss(losses)
        if not math.isfinite(total.item()):
            raise RuntimeError(f"loss is {total.item()} at {epoch_label(epoch, tc.epochs)} iteration {it}; "
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


def restore_rng(ckpt: Dict, rank: int, world_size: int) -> None:
    """Each rank continues from its own saved RNG state (data augmentation, denoising noise, dropout);
    a checkpoint from another world size (or from before per-rank states) gives every rank rank 0's."""
    states = ckpt.get("rng_per_rank")
    if states and len(states) == world_size:
        ckpt_io.set_rng_state(states[rank])
        return
    if world_size > 1:
        log.warning("checkpoint has RNG states for %s processes, not %d: every rank continues from rank 0's",
                    len(states) if states else 1, world_size)
    ckpt_io.set_rng_state(ckpt["rng"])


# Changing these on resume would not take effect (the saved optimizer and schedule continue), so it
# is refused. `epochs` may grow or shrink with the step schedule (it does not depend on it), not with cosine.
RESUME_FIXED = ("lr", "lr_backbone_mult", "lr_linear_proj_mult", "weight_decay", "scheduler", "lr_drop_epoch",
                "warmup_iters", "batch_size", "max_iters_per_epoch")


def check_resume_config(saved: Dict, cfg: ExperimentConfig, path: str) -> None:
    """Refuse a resume whose optimiser / schedule settings differ from the checkpoint's: they would
    be recorded without being applied."""
    old = (saved.get("config") or {}).get("train") or {}
    fixed = RESUME_FIXED + (("epochs",) if cfg.train.scheduler == "cosine" and not cfg.train.fit_to_budget else ())
    changed = [f"train.{k} {old[k]!r} -> {getattr(cfg.train, k)!r}" for k in fixed
               if k in old and old[k] != getattr(cfg.train, k)]
    if changed:
        raise ckpt_io.CheckpointError(
            f"resuming {path} with changed {', '.join(changed)}: a resumed run continues the saved optimizer and "
            "schedule; resume without changing them, or start a new run from these weights (fine-tune)")


def _best_so_far(resume_ckpt: Dict, best_path: Path) -> float:
    """The best mAP of the run being resumed: last.pth's record, or best.pth's when that is newer
    (a kill between writing best.pth and last.pth)."""
    best = float(resume_ckpt.get("best_map", -1.0))
    if best_path.is_file():
        try:
            best = max(best, float(ckpt_io.load_checkpoint(best_path).get("best_map", -1.0)))
        except ckpt_io.CheckpointError as e:
            log.warning("ignoring unreadable %s (%s)", best_path, e)
    return best


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _budget_shortfall(tc, clock: _Stopwatch, epochs_done: int, start_epoch: int) -> Optional[str]:
    """A warning when the run's pace will not fit train.time_budget_s, with the --epochs that would."""
    if tc.time_budget_s <= 0 or epochs_done <= 0:
        return None
    before = getattr(clock, "before_s", 0.0)  # trained before a resume: not this session's pace, but budget used
    per_epoch = (clock.elapsed() - before) / epochs_done
    total = tc.epochs - start_epoch
    if per_epoch * total <= tc.time_budget_s - before:
        return None
    fit = max(1, int((tc.time_budget_s - before) // per_epoch))
    return (f"at {_duration(per_epoch)} per epoch the {total} epochs need ~{_duration(per_epoch * total)} but "
            f"train.time_budget_s is {_duration(tc.time_budget_s)}: training will stop near epoch {start_epoch + fit} "
            f"and the {tc.scheduler} schedule, fitted to {tc.epochs} epochs, will not finish; --epochs {start_epoch + fit} "
            "fits the budget")


def _fitted_epochs(tc, clock: _Stopwatch, epochs_run: int, start_epoch: int, cap: Optional[int] = None) -> int:
    """The epoch count whose remainder fits train.time_budget_s at the pace so far (at least one more,
    at most `cap`, the configured epochs: a pace that picks up after a slow first epoch wins them back)."""
    cap = tc.epochs if cap is None else cap
    per_epoch = clock.elapsed() / max(epochs_run, 1)
    left = int((tc.time_budget_s - clock.elapsed()) // per_epoch) if per_epoch > 0 else cap
    return min(cap, start_epoch + epochs_run + max(1, left))


def train(cfg: ExperimentConfig, resume: Optional[str] = None, overrides: Sequence[str] = (),
          progress: bool = True, datasets: Optional[Tuple] = None, exist_ok: bool = False) -> Path:
    """Train `cfg` (with dotted `overrides` applied); returns the path of the last checkpoint.

    resume: a checkpoint from an earlier run of the same model; training continues after its epoch.
    datasets: optional (train, val) DetectionDatasets instead of building them from `cfg.data`.
    The run writes into `train.output_dir`; when that holds an earlier run (and this is not its
    resume) the next numbered folder is used (`exp` -> `exp2`), or the same one with `exist_ok`.
    Under torchrun every process trains its shard; rank 0 evaluates, logs and saves.
    """
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    tc = cfg.train
    epochs_cap = tc.epochs  # train.fit_to_budget moves `epochs` below this, never above
    info = ddp.init_distributed(tc.device)
    device = ddp.device_for(info, tc.device)
    resume_ckpt = ckpt_io.load_checkpoint(resume) if resume else None
    if resume_ckpt is not None:
        ckpt_io.check_same_model(resume_ckpt, cfg.model.name, resume)
        if "optimizer" not in resume_ckpt:
            raise ckpt_io.CheckpointError(f"{resume} holds weights only (a best.pth); resume from the run's last.pth, "
                                          "or start a new run from these weights")
        check_resume_config(resume_ckpt, cfg, resume)
    out_dir = Path(tc.output_dir)
    if info.is_main:  # other ranks never write
        out_dir = run_dir.prepare_run_dir(out_dir, resume=resume_ckpt is not None, exist_ok=exist_ok)
        from runtime.safety import refuse_output_over_input

        # --exist-ok into the folder of the weights being fine-tuned from would replace them with epoch 0's
        refuse_output_over_input([out_dir / name for name in RUN_OUTPUTS],
                                 [cfg.model.weights or None, getattr(cfg.model, "backbone_weights", "") or None],
                                 what="train output")
        ckpt_io.remove_stale_temp_files(out_dir)
    cfg = replace(cfg, train=replace(tc, output_dir=str(out_dir)))
    tc = cfg.train
    seed_everything(tc.seed + info.rank)

    from edgedet.data import build_dataloader, build_dataset
    from edgedet.data.padding import batch_padding
    from edgedet.models import create_model_from_config

    pretrained = (finetune.read_weights(cfg.model.weights, cfg.model.weights_config, cfg.model.weights_updates)
                  if cfg.model.weights else None)
    if pretrained is None and (cfg.model.weights_config or cfg.model.weights_updates):
        raise ValueError("model.weights_config / weights_updates (--config NAME / --update) describe official weights: "
                         "pass them with --weights PATH")
    if pretrained is not None:
        cfg = finetune.resolve_config(cfg, pretrained)
    elif cfg.model.keep_classes:
        raise ValueError("model.keep_classes picks class rows of pretrained weights: set model.weights (--weights) too")
    train_ds, val_ds = datasets if datasets is not None else (build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val"))
    cfg = _sync_classes(cfg, train_ds)
    if info.is_main:
        from edgedet.data.checks import report_split_classes

        report_split_classes(train_ds, val_ds)
    model = create_model_from_config(cfg.model)
    if pretrained is not None and resume_ckpt is None:
        report = finetune.load_pretrained(model, pretrained, cfg.model.keep_classes)
        log.info("%s", report.text())
        if info.is_main:
            report.save(out_dir)
    freeze = tc.freeze_backbone
    if pretrained is not None and pretrained.kind == "imagenet" and freeze == 0:
        freeze = 1  # ImageNet stem and layer1 stay frozen, as in every DETR recipe
    finetune.freeze_backbone(model, freeze)
    model = model.to(device)
    criterion = model.build_criterion().to(device)
    divisor, fill = batch_padding(model, train_ds, cfg.data.size_divisor)
    if info.is_main and (divisor > 1 or fill is not None):
        log.info("batches padded to multiples of %d px (data.size_divisor: %d%s)%s", divisor, cfg.data.size_divisor,
                 " = the model's need" if cfg.data.size_divisor == 0 else "",
                 ", with the runtime's letterbox colour (the model sees padding)" if fill else "")
    loader = build_dataloader(train_ds, batch_size=tc.batch_size, shuffle=True, num_workers=cfg.data.num_workers,
                              distributed=info.enabled, seed=tc.seed, size_divisor=divisor, fill=fill)
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
        if tc.fit_to_budget:  # the saved schedule's length (a fit may have shortened it) is the run's
            cfg = replace(cfg, train=replace(tc, epochs=scheduler.lr_lambdas[0].epochs))
            tc = cfg.train
        best = _best_so_far(resume_ckpt, out_dir / "best.pth")
        restore_rng(resume_ckpt, info.rank, info.world_size)
        log.info("resumed from %s after %s", resume, epoch_label(start_epoch - 1, tc.epochs))
    train_model = ddp.wrap_model(model, info, device)

    metrics_path, last_path, best_path = out_dir / "metrics.jsonl", out_dir / "last.pth", out_dir / "best.pth"
    if info.is_main:
        run_dir.truncate_metrics(metrics_path, start_epoch)  # a resumed run redoes what came after its checkpoint
        saved_row = (resume_ckpt or {}).get("metrics")
        if saved_row and not any(r.get("epoch") == saved_row.get("epoch") for r in run_dir.read_metrics_rows(metrics_path)):
            run_dir.write_metrics_row(metrics_path, saved_row)  # killed between last.pth and its metrics row
    # Time already trained before a resume (None in checkpoints from before it was saved: the budget restarts).
    trained_s = (resume_ckpt or {}).get("elapsed_s")
    clock = _Stopwatch(tc.time_budget_s, trained_s or 0.0)
    pace_from = start_epoch if trained_s is None else 0  # the epochs clock.elapsed() covers start here
    if trained_s is not None and tc.time_budget_s > 0 and info.is_main:
        log.info("time budget: %s of %s already used before the resume", _duration(trained_s), _duration(tc.time_budget_s))
    last_plot = time.monotonic()
    run_iters, done_before = (tc.epochs - start_epoch) * iters_per_epoch, 0

    def run_eta(it: int) -> str:  # the whole run's remaining time at its pace so far (evaluations included)
        done = done_before + it
        left = clock.session() / done * (run_iters - done)
        return _duration(min(left, tc.time_budget_s - clock.elapsed()) if tc.time_budget_s > 0 else left)

    epoch = start_epoch - 1
    while epoch + 1 < tc.epochs:
        epoch += 1
        _seed_epoch(loader, tc.seed, epoch)
        losses, n_iters, stopped = train_one_epoch(train_model, criterion, loader, optimizer, scheduler, device, cfg,
                                                   epoch, ema, scaler, clock, progress and info.is_main, run_eta)
        done_before += n_iters
        row = {"epoch": epoch, "iters": n_iters, "time_s": round(clock.elapsed(), 2),
               "lr": optimizer.param_groups[-1]["lr"], **{f"train_{k}": v for k, v in losses.items()}}
        last_epoch = epoch == tc.epochs - 1 or stopped
        rng_per_rank = ddp.gather_objects(ckpt_io.rng_state())  # every rank takes part; each resumes from its own
        if info.is_main:  # the epoch is safe before evaluation starts (a crash there loses nothing)
            ckpt_io.save_checkpoint(last_path, model, cfg, epoch, optimizer=optimizer, scheduler=scheduler, ema=ema,
                                    scaler=scaler, metrics=row, best_map=best, rng_per_rank=rng_per_rank,
                                    elapsed_s=clock.elapsed())
            run_dir.write_metrics_row(metrics_path, row)
        if info.is_main and (last_epoch or (tc.eval_every > 0 and (epoch + 1) % tc.eval_every == 0)):
            eval_model = ema.module if ema is not None else model
            rng = ckpt_io.rng_state()  # evaluation must not move training's RNG: last.pth holds it from before
            try:
                val = evaluate(eval_model, val_ds, tc.batch_size, device, progress=progress, size_divisor=cfg.data.size_divisor)
                # the figure of what ships, beside the training-time one
                deployed = deployed_view_row(eval_model, val_ds, cfg, val, tc.batch_size, device, progress) if last_epoch else {}
            finally:
                ckpt_io.set_rng_state(rng)
            row.update({f"val_{k}": v for k, v in val.items()})
            row.update(deployed)
        ddp.barrier()
        if info.is_main:
            log.info("%s: loss %.4f%s | elapsed %s, run ETA %s", epoch_label(epoch, tc.epochs), losses.get("loss", float("nan")),
                     f", mAP {row['val_mAP']:.4f}, mAP50 {row['val_mAP50']:.4f}" if "val_mAP" in row else "",
                     _duration(clock.elapsed()), run_eta(0) if done_before and not last_epoch else "0m00s")
            if epoch == start_epoch and not last_epoch and not tc.fit_to_budget:
                shortfall = _budget_shortfall(tc, clock, 1, start_epoch)
                if shortfall:
                    log.warning("%s", shortfall)
            if "val_mAP" in row:
                score = row["val_mAP"] if math.isfinite(row["val_mAP"]) else -1.0
                # best.pth from the first evaluation on (even at mAP 0), written before last.pth records it
                if score > best or not best_path.exists():
                    best = max(best, score)
                    ckpt_io.save_best(best_path, model, cfg, epoch, ema=ema, metrics=row, best_map=best)
                # last.pth (written above) is not rewritten: on resume best.pth's own best_map is read back
                run_dir.write_metrics_row(metrics_path, row)
            if last_epoch or time.monotonic() - last_plot > PLOT_EVERY_S:
                plot_curves(metrics_path, out_dir / "curves.png")
                last_plot = time.monotonic()
        ddp.barrier()
        if tc.fit_to_budget and tc.time_budget_s > 0 and not last_epoch:
            fitted = ddp.gather_objects(_fitted_epochs(tc, clock, epoch + 1 - pace_from, pace_from, epochs_cap))[0]
            if fitted != tc.epochs:  # rank 0's count on every rank
                if info.is_main:
                    log.info("train.fit_to_budget: %d epochs fit the %s budget at this pace (was %d); the %s schedule "
                             "now ends there", fitted, _duration(tc.time_budget_s), tc.epochs, tc.scheduler)
                cfg = replace(cfg, train=replace(tc, epochs=fitted))
                tc = cfg.train
                for factor in scheduler.lr_lambdas:  # one LRFactor shared by every parameter group
                    factor.epochs = fitted
                run_iters = (fitted - start_epoch) * iters_per_epoch
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


def deployed_view_row(model, val_ds, cfg, val: Dict[str, float], batch_size: int, device, progress: bool) -> Dict[str, Any]:
    """The validation mAP as the default export will see the images, logged beside the training-view figure
    (a warning naming the cause when they differ by more than 0.01) -> metrics row entries."""
    from edgedet.config import to_dict
    from edgedet.engine.deploy_eval import evaluate_deployed, gap_report

    if not hasattr(val_ds, "records") or not hasattr(val_ds, "coco_gt"):  # a custom dataset: no image files to letterbox
        log.debug("deployed-view evaluation skipped: %s has no image records", type(val_ds).__name__)
        return {}
    try:
        dep = evaluate_deployed(model, val_ds, to_dict(cfg), batch_size=batch_size, device=device, progress=progress)
    except ValueError as e:  # e.g. no input size the model can take could be derived from the data
        log.warning("deployed-view evaluation skipped: %s", e)
        return {}
    line, warning = gap_report(val, dep, cfg.model.name)
    log.info("validation %s", line)
    if warning:
        log.warning("%s", warning)
    return {"val_deployed_mAP": dep["mAP"], "val_deployed_mAP50": dep["mAP50"], "deployed_imgsz": dep["imgsz"]}


__all__ = ["train", "train_one_epoch", "seed_everything", "deployed_view_row"]
