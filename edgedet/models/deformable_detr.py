"""Deformable DETR (Zhu et al. 2021): multi-scale deformable attention, focal loss, 300 queries.

Registered as `deformable_detr`. Options: `with_box_refine` (each decoder layer refines the
previous layer's boxes with its own head) and `two_stage` (encoder tokens propose the queries;
needs box refinement, as in the paper's "++ two-stage" model).

Parameter names equal fundamentalvision/Deformable-DETR's except the backbone, which lives under
`backbone.body.` (official: `backbone.0.body.`) and, with learned position embeddings,
`position_embedding.` (official: `backbone.1.`). Heads are `class_embed.{i}` / `bbox_embed.{i}`,
one per decoder layer (+1 for the encoder with two-stage); without box refinement every entry is
the same module, so the checkpoint holds tied copies.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.config import ConfigError, ModelConfig
from edgedet.models.base import DetectorBase
from edgedet.models.detr import aux_outputs, build_position_embedding
from edgedet.nn.backbone import Backbone
from edgedet.nn.box_ops import inverse_sigmoid
from edgedet.nn.deformable_transformer import DeformableTransformer
from edgedet.nn.mlp import MLP
from edgedet.registry import MODELS


@dataclass
class DeformableDETRConfig(ModelConfig):
    """Defaults are the paper's Deformable DETR (R50, single scale of queries, 4 levels)."""

    name: str = "deformable_detr"
    backbone: str = "resnet50"
    hidden_dim: int = 256
    num_queries: int = 300
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 1024
    dropout: float = 0.1
    activation: str = "relu"
    num_feature_levels: int = 4
    enc_n_points: int = 4
    dec_n_points: int = 4
    with_box_refine: bool = False
    two_stage: bool = False
    position_embedding: str = "sine"  # sine | learned
    dilation: bool = False
    train_backbone: bool = True
    msda_impl: str = "auto"  # any name in edgedet.registry.MSDA_IMPLS; auto: cuda for CUDA tensors when built
    # Hungarian matching costs and loss weights (focal classification).
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    cls_loss_coef: float = 2.0
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    focal_alpha: float = 0.25


def _check_config(cfg: DeformableDETRConfig) -> None:
    if cfg.num_feature_levels == 2:
        raise ConfigError("num_feature_levels must be 1 (layer4 only) or >= 3 (layer2-4 plus extra stride-2 levels)")
    if cfg.num_feature_levels < 1:
        raise ConfigError(f"num_feature_levels must be >= 1, got {cfg.num_feature_levels}")
    if cfg.two_stage and not cfg.with_box_refine:
        raise ConfigError("two_stage needs with_box_refine=true (the encoder proposals use the refinement heads)")
    if cfg.hidden_dim % 32 != 0:
        raise ConfigError(f"hidden_dim must be a multiple of 32 (GroupNorm(32) in input_proj), got {cfg.hidden_dim}")


class DeformableDETR(DetectorBase):
    """forward(images [B, 3, H, W], mask [B, H, W] True at padding) ->
    pred_logits [B, Q, C] (sigmoid), pred_boxes [B, Q, 4] normalised cxcywh, aux_outputs,
    and with two-stage enc_outputs (one class-agnostic proposal per encoder token)."""

    class_dependent_patterns = ("class_embed.*", "transformer.decoder.class_embed.*")

    score_activation = "sigmoid"

    def __init__(self, cfg: DeformableDETRConfig):
        super().__init__()
        _check_config(cfg)
        self.config = cfg
        hidden = cfg.hidden_dim
        return_layers = (2, 3, 4) if cfg.num_feature_levels > 1 else (4,)
        self.backbone = Backbone(cfg.backbone, return_layers, cfg.train_backbone, frozen_bn=cfg.backbone_frozen_bn,
                                 dilation=cfg.dilation, weights=cfg.backbone_weights)
        self.position_embedding = build_position_embedding(cfg.position_embedding, hidden // 2, offset=0.5)
        self.transformer = DeformableTransformer(
            hidden, cfg.nheads, cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward, cfg.dropout, cfg.activation,
            cfg.num_feature_levels, cfg.dec_n_points, cfg.enc_n_points, cfg.two_stage, cfg.num_queries, cfg.msda_impl,
        )
        self.num_feature_levels = cfg.num_feature_levels
        self.input_proj = self._build_input_proj(hidden)
        if not cfg.two_stage:
            self.query_embed = nn.Embedding(cfg.num_queries, hidden * 2)
        self._build_heads(hidden)

    def _build_input_proj(self, hidden: int) -> nn.ModuleList:
        """1x1 conv + GroupNorm per backbone level, then 3x3 stride-2 convs for the extra levels."""
        projs = [nn.Sequential(nn.Conv2d(c, hidden, 1), nn.GroupNorm(32, hidden)) for c in self.backbone.num_channels]
        in_ch = self.backbone.num_channels[-1]
        for _ in range(self.num_feature_levels - len(projs)):
            projs.append(nn.Sequential(nn.Conv2d(in_ch, hidden, 3, stride=2, padding=1), nn.GroupNorm(32, hidden)))
            in_ch = hidden
        for proj in projs:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        return nn.ModuleList(projs)

    def _build_heads(self, hidden: int) -> None:
        cfg = self.config
        class_embed = nn.Linear(hidden, cfg.num_classes)
        bbox_embed = MLP(hidden, hidden, 4, 3)
        # Focal-loss prior: every class starts at probability 0.01.
        nn.init.constant_(class_embed.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.constant_(bbox_embed.layers[-1].weight, 0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0)
        num_pred = cfg.dec_layers + (1 if cfg.two_stage else 0)
        if cfg.with_box_refine:
            self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_pred))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_pred))
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
            self.transformer.decoder.bbox_embed = self.bbox_embed
        else:
            nn.init.constant_(bbox_embed.layers[-1].bias[2:], -2.0)
            self.class_embed = nn.ModuleList(class_embed for _ in range(num_pred))
            self.bbox_embed = nn.ModuleList(bbox_embed for _ in range(num_pred))
        if cfg.two_stage:
            self.transformer.decoder.class_embed = self.class_embed
            for box_embed in self.bbox_embed:
                nn.init.constant_(box_embed.layers[-1].bias[2:], 0.0)

    def multi_scale_features(self, images: Tensor, mask: Optional[Tensor]):
        """-> per level: projected features [B, hidden, H_l, W_l], masks [B, H_l, W_l], positions."""
        if mask is None:
            mask = torch.zeros(images.shape[0], images.shape[2], images.shape[3], dtype=torch.bool, device=images.device)
        feats = self.backbone(images, mask)
        srcs, masks, pos = [], [], []
        for lvl, (feat, feat_mask) in enumerate(feats):
            srcs.append(self.input_proj[lvl](feat))
            masks.append(feat_mask)
        for lvl in range(len(feats), self.num_feature_levels):
            src = self.input_proj[lvl](feats[-1][0] if lvl == len(feats) else srcs[-1])
            srcs.append(src)
            masks.append(F.interpolate(mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0])
        for src, m in zip(srcs, masks):
            pos.append(self.position_embedding(m).to(src.dtype))
        return srcs, masks, pos

    def forward(self, images: Tensor, mask: Optional[Tensor] = None, targets: Optional[List[Dict[str, Tensor]]] = None) -> Dict:
        srcs, masks, pos = self.multi_scale_features(images, mask)
        query_embed = None if self.config.two_stage else self.query_embed.weight
        hs, init_reference, inter_references, enc_class, enc_coord_unact = self.transformer(srcs, masks, pos, query_embed)
        logits, boxes = [], []
        for lvl in range(hs.shape[0]):
            reference = inverse_sigmoid(init_reference if lvl == 0 else inter_references[lvl - 1])
            delta = self.bbox_embed[lvl](hs[lvl])
            if reference.shape[-1] == 4:
                coord = delta + reference
            else:
                coord = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            logits.append(self.class_embed[lvl](hs[lvl]))
            boxes.append(coord.sigmoid())
        logits, boxes = torch.stack(logits), torch.stack(boxes)
        out = {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "aux_outputs": aux_outputs(logits, boxes) if self.config.aux_loss else [],
        }
        if self.config.two_stage:
            out["enc_outputs"] = {"pred_logits": enc_class, "pred_boxes": enc_coord_unact.sigmoid()}
        return out

    def build_criterion(self) -> nn.Module:
        from edgedet.losses import HungarianMatcher, SetCriterion

        c = self.config
        matcher = HungarianMatcher(cost_class=c.cost_class, cost_bbox=c.cost_bbox, cost_giou=c.cost_giou,
                                   focal=True, focal_alpha=c.focal_alpha)
        base = {"loss_ce": c.cls_loss_coef, "loss_bbox": c.bbox_loss_coef, "loss_giou": c.giou_loss_coef}
        weight_dict = dict(base)
        if c.aux_loss:
            for i in range(c.dec_layers - 1):
                weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
        if c.two_stage:
            weight_dict.update({f"{k}_enc": v for k, v in base.items()})
        return SetCriterion(c.num_classes, matcher, weight_dict, losses=("labels", "boxes", "cardinality"),
                            loss_class="focal", focal_alpha=c.focal_alpha)


@MODELS.register("deformable_detr", config=DeformableDETRConfig)
def build_deformable_detr(cfg: DeformableDETRConfig) -> DeformableDETR:
    return DeformableDETR(cfg)
