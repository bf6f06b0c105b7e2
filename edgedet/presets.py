"""Model size presets (`edgedet train --preset nano`, or `--set model.preset=nano`) and `--imgsz`.

A preset sets the size fields a family has (backbone, width, depth, queries, feature levels); fields a
family lacks are skipped. `nano` is the size of the embedded demo detector: it trains in minutes on a
2-core CPU; `small` keeps a ResNet-18; `base` is the paper's configuration (the family defaults).
nano and small also set the from-scratch training recipe (`PRESET_TRAIN`) before flags and --set.
The real-time families (RT-DETRv2, D-FINE, RF-DETR) come in released sizes with their own backbones, so
for them a preset names a released config (`RELEASED_PRESETS`: `--preset small` on dfine is D-FINE-S).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict

log = logging.getLogger(__name__)

PRESETS: Dict[str, Dict[str, Any]] = {
    "nano": dict(backbone="resnet10_slim", backbone_frozen_bn=False, hidden_dim=128, nheads=4, enc_layers=2,
                 dec_layers=3, dim_feedforward=512, num_queries=100, num_feature_levels=3, dn_number=30),
    "small": dict(backbone="resnet18", backbone_frozen_bn=False, hidden_dim=192, nheads=6, enc_layers=3,
                  dec_layers=4, dim_feedforward=768, num_queries=200, num_feature_levels=3),
    "base": {},
}
# Real-time families: preset -> released config (the smallest released sizes; base is the paper's headline).
RELEASED_PRESETS: Dict[str, Dict[str, str]] = {
    "rtdetr": {"nano": "rtdetrv2_r18vd", "small": "rtdetrv2_r34vd", "base": "rtdetrv2_r50vd"},
    "dfine": {"nano": "dfine_hgnetv2_n_coco", "small": "dfine_hgnetv2_s_coco", "base": "dfine_hgnetv2_l_coco"},
    "rfdetr": {"nano": "rfdetr_nano", "small": "rfdetr_small", "base": "rfdetr_base"},
}
# Fields a preset never changes: where the weights come from (the dataset sets the classes later).
_KEPT = ("weights", "weights_config", "weights_updates", "backbone_weights")
# The small presets train from scratch (no ImageNet weights offline): the embedded demo detector's
# recipe (full backbone learning rate, higher lr, cosine with warm-up). Flags and --set still override it.
PRESET_TRAIN: Dict[str, Dict[str, Any]] = {
    "nano": dict(lr=4e-4, lr_backbone_mult=1.0, scheduler="cosine", warmup_iters=30),
    "small": dict(lr=2e-4, lr_backbone_mult=1.0, scheduler="cosine", warmup_iters=50),
    "base": {},
}


def apply_preset(model_cfg: Any, preset: str) -> Any:
    """`model_cfg` (a family's ModelConfig) with the preset's sizes; an unknown name lists the valid ones."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset '{preset}'; valid: {', '.join(PRESETS)}")
    own = {f.name for f in dataclasses.fields(model_cfg)}
    released = RELEASED_PRESETS.get(getattr(model_cfg, "name", ""), {}).get(preset)
    if released:
        sized = released_config(model_cfg.name, released)
        log.info("preset %s for %s is the released config %s", preset, model_cfg.name, released)
        return dataclasses.replace(sized, **{k: getattr(model_cfg, k) for k in _KEPT if k in own})
    values = {k: v for k, v in PRESETS[preset].items() if k in own}
    return dataclasses.replace(model_cfg, **values)


def released_config(family: str, name: str) -> Any:
    """The ModelConfig of released config `name` of a real-time family (no updates)."""
    if family == "rfdetr":
        from edgedet.models.rfdetr import rfdetr_config

        return rfdetr_config(name)
    from edgedet.checkpoints.released_configs import released_family

    return released_family(family).model_config(name, [])


def apply_preset_train(train_cfg: Any, model_cfg: Any, preset: str) -> Any:
    """`train_cfg` with the preset's from-scratch recipe, unless the backbone starts from weights."""
    if getattr(model_cfg, "backbone_weights", None):
        return train_cfg
    return dataclasses.replace(train_cfg, **PRESET_TRAIN.get(preset, {}))


def apply_imgsz(data_cfg: Any, imgsz: int) -> Any:
    """Train and validate at shorter side `imgsz`: the multi-scale list and max_size scale with it."""
    if imgsz < 32:
        raise ValueError(f"--imgsz must be at least 32, got {imgsz}")
    factor = imgsz / float(data_cfg.val_size)
    scales = sorted({max(32, int(round(s * factor / 8.0)) * 8) for s in data_cfg.scales})
    max_size = int(round(data_cfg.max_size * factor)) if data_cfg.max_size else 0
    return dataclasses.replace(data_cfg, val_size=int(imgsz), scales=scales, max_size=max_size)


__all__ = ["PRESETS", "PRESET_TRAIN", "RELEASED_PRESETS", "released_config", "apply_preset", "apply_preset_train", "apply_imgsz"]
