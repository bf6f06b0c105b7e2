"""DAB-DETR (Liu et al. 2022, "Dynamic Anchor Boxes are Better Queries for DETR").

Owns `DABDETRConfig`, the `DABDETR` detector and its registration as `dab_detr`. The
transformer lives in `edgedet.nn.dab_transformer`. Queries are learned 4-D anchor boxes
(`refpoint_embed`, stored before sigmoid); each decoder layer predicts a correction through
the shared box head, and every layer's boxes are that correction applied to its own anchor.

Parameter names equal the official IDEA-Research/DAB-DETR state_dict except the backbone
prefix (`backbone.body.*` here, `backbone.0.body.*` there). Sigmoid classification (focal
loss), no no-object column.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from edgedet.config import ModelConfig
from edgedet.losses import HungarianMatcher, SetCriterion
from edgedet.models.base import DetectorBase
from edgedet.models.set_loss_config import FocalSetLossConfig
from edgedet.nn.backbone import Backbone
from edgedet.nn.box_ops import inverse_sigmoid
from edgedet.nn.dab_transformer import ANCHOR_LOGIT_EPS, DABTransformer
from edgedet.nn.mlp import MLP
from edgedet.nn.position_encoding import PositionEmbeddingSine
from edgedet.registry import MODELS


@dataclass
class DABDETRConfig(FocalSetLossConfig, ModelConfig):
    """Defaults follow the official DAB-DETR R50 recipe (main.py defaults); loss weights and matching costs
    in `FocalSetLossConfig`."""

    name: str = "dab_detr"
    num_classes: int = 91
    backbone: str = "resnet50"
    hidden_dim: int = 256
    num_queries: int = 300
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.0
    activation: str = "prelu"  # relu | gelu | prelu | selu
    # As the official code: only adds a final encoder LayerNorm; the layers stay post-norm.
    pre_norm: bool = False
    dilation: bool = False
    train_backbone: bool = True
    pe_temperature_h: float = 20.0
    pe_temperature_w: float = 20.0
    num_patterns: int = 0
    random_refpoints_xy: bool = False  # initialise anchor centres uniformly in [0, 1]
    modulate_hw_attn: bool = True
    keep_query_pos: bool = False


class DABDETR(DetectorBase):
    """forward(images [B, 3, H, W], mask [B, H, W] True at padding) -> standard output dict.

    pred_logits [B, Q, num_classes] (sigmoid), pred_boxes [B, Q, 4] normalised cxcywh,
    aux_outputs: one dict per earlier decoder layer.
    """

    class_dependent_patterns = ("class_embed.*",)

    score_activation = "sigmoid"

    def __init__(self, cfg: DABDETRConfig):
        super().__init__()
        self.config = cfg
        d = cfg.hidden_dim
        self.backbone = Backbone(
            cfg.backbone, return_layers=(4,), train_backbone=cfg.train_backbone, frozen_bn=cfg.backbone_frozen_bn,
            dilation=cfg.dilation, weights=cfg.backbone_weights,
        )
        self.position_embedding = PositionEmbeddingSine(
            d // 2, temperature_h=cfg.pe_temperature_h, temperature_w=cfg.pe_temperature_w, normalize=True
        )
        self.transformer = DABTransformer(
            d_model=d,
            nheads=cfg.nheads,
            num_encoder_layers=cfg.enc_layers,
            num_decoder_layers=cfg.dec_layers,
            dim_feedforward=cfg.dim_feedforward,
            dropout=cfg.dropout,
            activation=cfg.activation,
            encoder_final_norm=cfg.pre_norm,
            modulate_hw_attn=cfg.modulate_hw_attn,
            keep_query_pos=cfg.keep_query_pos,
            num_patterns=cfg.num_patterns,
        )
        self.class_embed = nn.Linear(d, cfg.num_classes)
        self.bbox_embed = MLP(d, d, 4, 3)
        self.refpoint_embed = nn.Embedding(cfg.num_queries, 4)
        self.input_proj = nn.Conv2d(self.backbone.num_channels[-1], d, kernel_size=1)
        # One box head for the final boxes and for the decoder's anchor updates.
        self.transformer.decoder.bbox_embed = self.bbox_embed
        self._reset_heads(cfg)

    def _reset_heads(self, cfg: DABDETRConfig) -> None:
        prior_prob = 0.01  # focal-loss prior: every class starts at p = 0.01
        nn.init.constant_(self.class_embed.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.constant_(self.bbox_embed.layers[-1].weight, 0.0)
        nn.init.constant_(self.bbox_embed.layers[-1].bias, 0.0)
        if cfg.random_refpoints_xy:
            with torch.no_grad():
                xy = torch.rand_like(self.refpoint_embed.weight[:, :2])
                self.refpoint_embed.weight[:, :2] = inverse_sigmoid(xy, ANCHOR_LOGIT_EPS)

    def forward(self, images: Tensor, mask: Optional[Tensor] = None, targets: Optional[List[Dict[str, Tensor]]] = None) -> Dict:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"DABDETR expects images [B, 3, H, W], got {tuple(images.shape)}")
        src, feat_mask = self.backbone(images, mask)[-1]
        pos = self.position_embedding(feat_mask).to(src.dtype)
        hs, anchors_cxcywh = self.transformer(self.input_proj(src), feat_mask, self.refpoint_embed.weight, pos)
        logits = self.class_embed(hs)
        boxes_cxcywh = (self.bbox_embed(hs) + inverse_sigmoid(anchors_cxcywh, ANCHOR_LOGIT_EPS)).sigmoid()
        out: Dict = {"pred_logits": logits[-1], "pred_boxes": boxes_cxcywh[-1]}
        if self.config.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes_cxcywh[:-1])]
        return out

    def build_criterion(self) -> nn.Module:
        cfg = self.config
        matcher = HungarianMatcher(
            cost_class=cfg.set_cost_class, cost_bbox=cfg.set_cost_bbox, cost_giou=cfg.set_cost_giou, focal=True, focal_alpha=cfg.focal_alpha
        )
        base = {"loss_ce": cfg.cls_loss_coef, "loss_bbox": cfg.bbox_loss_coef, "loss_giou": cfg.giou_loss_coef}
        weight_dict = dict(base)
        if cfg.aux_loss:
            for i in range(cfg.dec_layers - 1):
                weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
        return SetCriterion(
            cfg.num_classes, matcher, weight_dict, losses=("labels", "boxes"), loss_class="focal", focal_alpha=cfg.focal_alpha
        )


@MODELS.register("dab_detr", config=DABDETRConfig)
def build_dab_detr(cfg: DABDETRConfig) -> DABDETR:
    return DABDETR(cfg)
