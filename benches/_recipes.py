"""Shared recipes of the convergence bench: one small architecture and one optimisation recipe for every
DETR family, and the datasets it runs on.

Every family gets the same backbone (ResNet-18 trained from scratch with live BatchNorm: no ImageNet
weights exist offline), hidden size, heads, encoder/decoder depth, feed-forward width, query count,
image size, batch size and LR schedule. Only what defines a family differs: its own loss weights and
matching costs (the family defaults), and its own structure (multi-scale deformable attention with
four feature levels, box refinement, two-stage proposals, denoising queries, auxiliary heads).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from edgedet.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from edgedet.models import default_config

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Architecture shared by every family (fields a family lacks are ignored, e.g. DETR has no levels).
SHARED_MODEL = dict(backbone="resnet18", backbone_weights=None, backbone_frozen_bn=False, hidden_dim=128, nheads=4,
                    enc_layers=2, dec_layers=2, dim_feedforward=512, num_queries=100, dropout=0.0, aux_loss=True)
# Both multi-scale families read ResNet stages 2-4 plus one extra stride-64 conv level (their official 4 levels).
_MULTI_SCALE = dict(num_feature_levels=4, enc_n_points=4, dec_n_points=4)
# Family structure on top of SHARED_MODEL. Co-DINO's R-CNN head is scaled down for a CPU.
FAMILY_MODEL: Dict[str, Dict] = {
    "detr": {},
    "dab_detr": {},
    "deformable_detr": dict(_MULTI_SCALE, with_box_refine=True, two_stage=True),
    "dino": dict(_MULTI_SCALE),
    "co_dino": dict(_MULTI_SCALE, aux_heads=[
        {"type": "atss"},
        {"type": "rcnn", "fc_dim": 256, "roi_size": 4, "pre_nms_top_k": 300, "post_nms_top_k": 200,
         "roi_num_samples": 128}]),
}
MODELS: Tuple[str, ...] = tuple(FAMILY_MODEL)

# One optimisation recipe for all: AdamW, cosine decay after a short warm-up, same LR for the
# from-scratch backbone as for the transformer.
SHARED_TRAIN = dict(batch_size=4, lr=2e-4, lr_backbone_mult=1.0, weight_decay=1e-4, clip_max_norm=0.1,
                    scheduler="cosine", warmup_iters=30, eval_every=1, seed=0, device="cpu", amp=False, ema=False)


def model_config(name: str) -> ModelConfig:
    """The family's default config with the shared small architecture and its own structure applied."""
    if name not in FAMILY_MODEL:
        raise ValueError(f"no convergence recipe for model '{name}'. Valid: {', '.join(MODELS)}")
    cfg = default_config(name)
    fields = {**SHARED_MODEL, **FAMILY_MODEL[name]}
    return replace(cfg, **{k: v for k, v in fields.items() if hasattr(cfg, k)})


@dataclass
class DatasetSpec:
    """A dataset of the bench: `data(args)` -> DataConfig, or None plus `missing(args)` saying why."""

    name: str
    title: str
    data: Callable[[object], DataConfig]
    missing: Callable[[object], Optional[str]]


def _synthetic_data(args) -> DataConfig:
    s = args.synthetic_size
    return DataConfig(format="synthetic", root=str(Path(args.out) / "data" / "synthetic"),
                      synthetic_train_images=args.synthetic_train, synthetic_val_images=args.synthetic_val,
                      synthetic_image_size=s, synthetic_num_classes=3, scales=[s], max_size=s, val_size=s, hflip=0.5)


def _bccd_data(args) -> DataConfig:
    s = args.bccd_size
    # 640x480 images: shorter side -> s, so the longer one is 4/3 s; one scale keeps the step cost steady.
    return DataConfig(format="voc", root=str(args.bccd_root), train_split="train", val_split=args.bccd_eval_split,
                      scales=[s], max_size=(s * 4 + 2) // 3, val_size=s, hflip=0.5)


def _bccd_missing(args) -> Optional[str]:
    root = Path(args.bccd_root)
    if not (root / "Annotations").is_dir() or not (root / "ImageSets" / "Main" / "train.txt").is_file():
        return f"BCCD not found at {root} (expects Annotations/ and ImageSets/Main/train.txt)"
    return None


DATASETS: Dict[str, DatasetSpec] = {
    "synthetic": DatasetSpec("synthetic", "synthetic shapes", _synthetic_data, lambda args: None),
    "bccd": DatasetSpec("bccd", "BCCD (blood cells)", _bccd_data, _bccd_missing),
}


def experiment(model: str, data: DataConfig, output_dir: Path, epochs: int, budget_s: float,
               max_iters_per_epoch: int = 0, overrides: Optional[Dict] = None) -> ExperimentConfig:
    """ExperimentConfig of `model` on `data` with the shared training recipe (plus `overrides` of train fields)."""
    train = TrainConfig(output_dir=str(output_dir), epochs=epochs, time_budget_s=budget_s,
                        max_iters_per_epoch=max_iters_per_epoch, **{**SHARED_TRAIN, **(overrides or {})})
    return ExperimentConfig(model=model_config(model), data=data, train=train)


def parse_list(text: str, valid: Tuple[str, ...] | List[str], what: str) -> List[str]:
    """Comma-separated names -> list; an unknown name raises a ValueError listing the valid ones."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"no {what} given. Valid: {', '.join(valid)}")
    for n in names:
        if n not in valid:
            raise ValueError(f"unknown {what} '{n}'. Valid: {', '.join(valid)}")
    return names


__all__ = ["MODELS", "DATASETS", "SHARED_MODEL", "FAMILY_MODEL", "SHARED_TRAIN", "model_config", "experiment",
           "parse_list", "DatasetSpec", "SHARED"]
