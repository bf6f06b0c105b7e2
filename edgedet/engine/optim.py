"""AdamW with per-module learning-rate groups, and per-iteration LR schedules (step / cosine, warmup)."""
from __future__ import annotations

import math
from typing import Dict, List

import torch
from torch import nn

from edgedet.config import TrainConfig

SCHEDULERS = ("step", "cosine")
# Deformable attention's offset/reference projections train at a reduced rate, as in Deformable DETR.
LINEAR_PROJ_NAMES = ("sampling_offsets", "reference_points")


def param_groups(model: nn.Module, cfg: TrainConfig) -> List[Dict]:
    """Split trainable parameters into backbone (lr·lr_backbone_mult), deformable projections
    (lr·lr_linear_proj_mult) and the rest (lr). Empty groups are dropped. A family with its own
    recipe (RF-DETR's layer-wise ViT decay) provides `model.param_groups(cfg)` instead."""
    own = getattr(model, "param_groups", None)
    if callable(own):
        return own(cfg)
    groups: Dict[str, List[nn.Parameter]] = {"backbone": [], "linear_proj": [], "other": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("backbone") or ".backbone." in name:
            groups["backbone"].append(p)
        elif any(k in name for k in LINEAR_PROJ_NAMES):
            groups["linear_proj"].append(p)
        else:
            groups["other"].append(p)
    lrs = {"backbone": cfg.lr * cfg.lr_backbone_mult, "linear_proj": cfg.lr * cfg.lr_linear_proj_mult, "other": cfg.lr}
    return [{"params": ps, "lr": lrs[k], "name": k} for k, ps in groups.items() if ps]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


class LRFactor:
    """Multiplier of the base LR at iteration `it` (an object, so LambdaLR's state_dict keeps it)."""

    def __init__(self, kind: str, iters_per_epoch: int, epochs: int, lr_drop_epoch: int, warmup_iters: int,
                 min_factor: float = 0.01):
        if kind not in SCHEDULERS:
            raise ValueError(f"unknown scheduler '{kind}'. Valid: {', '.join(SCHEDULERS)}")
        self.kind, self.iters_per_epoch, self.epochs = kind, max(1, iters_per_epoch), max(1, epochs)
        self.lr_drop_epoch, self.warmup_iters, self.min_factor = lr_drop_epoch, warmup_iters, min_factor

    def __call__(self, it: int) -> float:
        warm = min(1.0, (it + 1) / self.warmup_iters) if self.warmup_iters > 0 else 1.0
        if self.kind == "step":
            return warm * (0.1 if it // self.iters_per_epoch >= self.lr_drop_epoch else 1.0)
        total = self.iters_per_epoch * self.epochs
        progress = min(1.0, it / total)
        return warm * (self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule: call `.step()` after every optimiser step."""
    factor = LRFactor(cfg.scheduler, iters_per_epoch, cfg.epochs, cfg.lr_drop_epoch, cfg.warmup_iters)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


__all__ = ["build_optimizer", "build_scheduler", "param_groups", "LRFactor", "SCHEDULERS"]
