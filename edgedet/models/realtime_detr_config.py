"""The settings the real-time DETRs share: RT-DETRv2 (`rtdetr`) and D-FINE (`dfine`, whose DEIM
checkpoints load too). D-FINE is built on RT-DETRv2's pieces, so these fields mean the same in both
and have the same defaults (the released configs'); each family's config adds its own fields and the
defaults that differ (widths, levels, points, loss weights).
"""
from __future__ import annotations

from dataclasses import dataclass

from edgedet.config import ModelConfig


@dataclass
class RealTimeDETRConfig(ModelConfig):
    num_classes: int = 80
    backbone_frozen_bn: bool = False  # the official freeze_norm
    backbone_freeze_at: int = -1
    # Hybrid encoder (AIFI on the coarsest level(s), then top-down / bottom-up fusion)
    encoder_nhead: int = 8
    encoder_dropout: float = 0.0
    encoder_act: str = "gelu"
    num_encoder_layers: int = 1
    pe_temperature: float = 10000.0
    # Decoder (query selection from encoder tokens, deformable cross-attention with per-level points)
    num_queries: int = 300
    nheads: int = 8
    dec_layers: int = 3
    dropout: float = 0.0
    activation: str = "relu"
    learn_query_content: bool = False
    eval_idx: int = -1
    anchor_eps: float = 0.01
    cross_attn_method: str = "default"  # default (bilinear) | discrete (nearest pixel, RT-DETRv2's rule)
    # Contrastive denoising (training only)
    num_denoising: int = 100
    label_noise_ratio: float = 0.5
    box_noise_scale: float = 1.0
    # Varifocal loss, matcher costs, postprocess
    vfl_alpha: float = 0.75
    vfl_gamma: float = 2.0
    set_cost_class: float = 2.0
    set_cost_bbox: float = 5.0
    set_cost_giou: float = 2.0
    focal_alpha: float = 0.25  # matcher
    num_top_queries: int = 300
    msda_impl: str = "auto"  # any name in edgedet.registry.MSDA_IMPLS; auto: cuda for CUDA tensors when built, else pytorch
