"""Loss weights and Hungarian matching costs of the DETRs with a sigmoid focal classification loss
(DAB-DETR, DINO and the families built on it, RF-DETR): the same names, meaning and defaults in each
(the official repositories' main.py defaults)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FocalSetLossConfig:
    """Mixed into a family's config after ModelConfig: `class XConfig(FocalSetLossConfig, ModelConfig)`."""

    cls_loss_coef: float = 1.0
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    set_cost_class: float = 2.0
    set_cost_bbox: float = 5.0
    set_cost_giou: float = 2.0
    focal_alpha: float = 0.25
