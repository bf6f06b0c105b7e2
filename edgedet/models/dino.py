"""DINO (Zhang et al. 2022, "DETR with Improved DeNoising Anchor Boxes").

Owns `DINOConfig`, the `DINO` detector and its registration as `dino`. The transformer
(deformable encoder, mixed query selection, look-forward-twice decoder) lives in
`edgedet.nn.dino_transformer`, the contrastive denoising queries in `edgedet.nn.denoising`,
the loss in `edgedet.losses.dn_criterion`.

Feature levels: 4 scales = ResNet layer2/3/4 (strides 8/16/32) + one stride-2 conv on layer4;
5 scales adds layer1 (stride 4) in front. Parameter names equal the official
IDEA-Research/DINO state_dict except the backbone prefix (`backbone.body.*` here,
`backbone.0.body.*` there); as there, `bbox_embed.{i}` / `class_embed.{i}` are the very modules
`transformer.decoder.bbox_embed.{i}` / `transformer.decoder.class_embed.{i}` (and one module
for every layer when shared). Sigmoid classification (focal loss), no no-object column.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.config import ConfigError, ModelConfig
from edgedet.models.base import DetectorBase
from edgedet.models.set_loss_config import FocalSetLossConfig
from edgedet.nn.backbone import Backbone
from edgedet.nn.denoising import build_cdn_queries, build_label_encoder, split_dn
from edgedet.nn.dino_transformer import DINOTransformer
from edgedet.nn.mlp import MLP
from edgedet.nn.position_encoding import PositionEmbeddingSine
from edgedet.registry import MODELS

TWO_STAGE_TYPES = ("standard",)


@dataclass
class DINOConfig(FocalSetLossConfig, ModelConfig):
    """Defaults follow the official config/DINO/DINO_4scale.py (R50, 12-epoch recipe)."""

    name: str = "dino"
    num_classes: int = 91
    backbone: str = "resnet50"
    hidden_dim: int = 256
    num_queries: int = 900
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.0
    num_feature_levels: int = 4  # 4: layer2-4 + extra conv; 5: layer1-4 + extra conv
    enc_n_points: int = 4
    dec_n_points: int = 4
    dilation: bool = False
    train_backbone: bool = True
    pe_temperature_h: float = 20.0
    pe_temperature_w: float = 20.0
    two_stage: str = "standard"  # mixed query selection (the only DINO mode implemented)
    embed_init_tgt: bool = True  # learned content queries; False = the selected encoder tokens
    dec_pred_class_embed_share: bool = True
    dec_pred_bbox_embed_share: bool = True
    two_stage_class_embed_share: bool = False
    two_stage_bbox_embed_share: bool = False
    look_forward_twice: bool = True
    # Contrastive denoising (training only).
    dn_number: int = 100
    dn_label_noise_ratio: float = 0.5
    dn_box_noise_scale: float = 0.4
    dn_labelbook_size: Optional[int] = None  # rows of label_enc minus one; None = num_classes
    # Fields that follow the class count: fine-tuning to another class count resets them to None.
    class_count_fields: ClassVar[Tuple[str, ...]] = ("dn_labelbook_size",)
    # Loss weight of the encoder's (two-stage) proposals; the others and the matching costs: FocalSetLossConfig.
    interm_loss_coef: float = 1.0
    msda_impl: str = "auto"  # any name in edgedet.registry.MSDA_IMPLS; auto: cuda for CUDA tensors when built


def _check_config(cfg: DINOConfig) -> None:
    if cfg.two_stage not in TWO_STAGE_TYPES:
        raise ConfigError(f"DINO two_stage '{cfg.two_stage}' is not supported. Valid: {', '.join(TWO_STAGE_TYPES)}")
    if not 2 <= cfg.num_feature_levels <= 5:
        raise ConfigError(f"DINO num_feature_levels must be 2..5 (4 and 5 are the official ones), got {cfg.num_feature_levels}")
    if cfg.hidden_dim % 32 != 0:
        raise ConfigError(f"DINO hidden_dim must be a multiple of 32 (GroupNorm(32) on the inputs), got {cfg.hidden_dim}")
    if (cfg.two_stage_class_embed_share or cfg.two_stage_bbox_embed_share) and not (
        cfg.dec_pred_class_embed_share and cfg.dec_pred_bbox_embed_share
    ):
        raise ConfigError("DINO two_stage_*_embed_share needs dec_pred_class_embed_share and dec_pred_bbox_embed_share")


def build_multiscale_input(cfg: DINOConfig) -> Tuple[Backbone, nn.ModuleList, PositionEmbeddingSine]:
    """DINO's image side before the encoder: backbone, per-level input projections, position embedding.

    Levels: the last (num_feature_levels - 1) ResNet stages, then one stride-2 conv on the last
    stage. Shared by every DINO-based detector (`trex` too) so their key layouts stay equal.
    """
    d = cfg.hidden_dim
    return_layers = tuple(range(6 - cfg.num_feature_levels, 5))
    backbone = Backbone(cfg.backbone, return_layers=return_layers, train_backbone=cfg.train_backbone,
                        frozen_bn=cfg.backbone_frozen_bn, dilation=cfg.dilation, weights=cfg.backbone_weights)
    projs = [nn.Sequential(nn.Conv2d(c, d, kernel_size=1), nn.GroupNorm(32, d)) for c in backbone.num_channels]
    projs.append(nn.Sequential(nn.Conv2d(backbone.num_channels[-1], d, kernel_size=3, stride=2, padding=1),
                               nn.GroupNorm(32, d)))
    for proj in projs:
        nn.init.xavier_uniform_(proj[0].weight, gain=1)
        nn.init.constant_(proj[0].bias, 0)
    position = PositionEmbeddingSine(d // 2, temperature_h=cfg.pe_temperature_h, temperature_w=cfg.pe_temperature_w,
                                     normalize=True)
    return backbone, nn.ModuleList(projs), position


def multiscale_features(model: nn.Module, images: Tensor, mask: Optional[Tensor]):
    """Run `build_multiscale_input`'s modules (attributes of `model`) -> per level (features
    [B, D, H_l, W_l], mask [B, H_l, W_l] True at padding, position [B, D, H_l, W_l])."""
    if mask is None:
        mask = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.bool, device=images.device)
    feats = model.backbone(images, mask)
    srcs = [proj(f) for proj, (f, _) in zip(model.input_proj, feats)]
    masks = [m for _, m in feats]
    srcs.append(model.input_proj[-1](feats[-1][0]))
    masks.append(F.interpolate(mask[None].float(), size=srcs[-1].shape[-2:]).to(torch.bool)[0])
    pos = [model.position_embedding(m).to(s.dtype) for s, m in zip(srcs, masks)]
    return srcs, masks, pos


class DINO(DetectorBase):
    """forward(images [B, 3, H, W], mask [B, H, W] True at padding, targets) -> output dict.

    pred_logits [B, K, C] (sigmoid), pred_boxes [B, K, 4] normalised cxcywh, aux_outputs (earlier
    decoder layers), interm_outputs (the K selected encoder proposals after the encoder heads),
    interm_outputs_for_matching_pre (same logits, raw proposals). In training mode with targets:
    dn_meta {pad_size, num_dn_group} and dn_outputs (the denoising queries' predictions, same
    layout: pred_logits [B, pad_size, C], pred_boxes, aux_outputs).
    """

    # label_enc: labelbook + 1 rows (the denoising label book, one row per class).
    class_dependent_patterns = ("class_embed.*", "transformer.decoder.class_embed.*",
                                "transformer.enc_out_class_embed.*", "label_enc.*")

    score_activation = "sigmoid"

    def __init__(self, cfg: DINOConfig):
        super().__init__()
        _check_config(cfg)
        self.config = cfg
        d = cfg.hidden_dim
        self.transformer = DINOTransformer(
            d_model=d, n_heads=cfg.nheads, num_queries=cfg.num_queries, num_encoder_layers=cfg.enc_layers,
            num_decoder_layers=cfg.dec_layers, dim_feedforward=cfg.dim_feedforward, dropout=cfg.dropout,
            num_feature_levels=cfg.num_feature_levels, enc_n_points=cfg.enc_n_points, dec_n_points=cfg.dec_n_points,
            msda_impl=cfg.msda_impl, look_forward_twice=cfg.look_forward_twice, embed_init_tgt=cfg.embed_init_tgt,
        )
        labelbook = cfg.num_classes if cfg.dn_labelbook_size is None else cfg.dn_labelbook_size
        self.label_enc = build_label_encoder(labelbook, d)

        self.backbone, self.input_proj, self.position_embedding = build_multiscale_input(cfg)

        class_head = nn.Linear(d, cfg.num_classes)
        box_head = MLP(d, d, 4, 3)
        prior_prob = 0.01  # focal-loss prior: every class starts at p = 0.01
        nn.init.constant_(class_head.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.constant_(box_head.layers[-1].weight, 0.0)
        nn.init.constant_(box_head.layers[-1].bias, 0.0)
        n = cfg.dec_layers

        def per_layer(head: nn.Module, share: bool) -> nn.ModuleList:
            return nn.ModuleList([head] * n if share else [copy.deepcopy(head) for _ in range(n)])

        self.bbox_embed = per_layer(box_head, cfg.dec_pred_bbox_embed_share)
        self.class_embed = per_layer(class_head, cfg.dec_pred_class_embed_share)
        self.transformer.decoder.bbox_embed = self.bbox_embed
        self.transformer.decoder.class_embed = self.class_embed
        self.transformer.enc_out_bbox_embed = box_head if cfg.two_stage_bbox_embed_share else copy.deepcopy(box_head)
        self.transformer.enc_out_class_embed = class_head if cfg.two_stage_class_embed_share else copy.deepcopy(class_head)

    def multiscale_features(self, images: Tensor, mask: Optional[Tensor]):
        """-> per level (features [B, D, H_l, W_l], mask [B, H_l, W_l], position [B, D, H_l, W_l])."""
        return multiscale_features(self, images, mask)

    def forward(self, images: Tensor, mask: Optional[Tensor] = None, targets: Optional[List[Dict[str, Tensor]]] = None) -> Dict:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"DINO expects images [B, 3, H, W], got {tuple(images.shape)}")
        cfg = self.config
        srcs, masks, pos = self.multiscale_features(images, mask)
        use_dn = self.training and targets is not None and cfg.dn_number > 0
        dn = None
        if use_dn:
            if len(targets) != images.shape[0]:
                raise ValueError(f"DINO got {len(targets)} targets for {images.shape[0]} images")
            dn = build_cdn_queries(targets, self.label_enc, cfg.num_queries, cfg.num_classes, cfg.dn_number,
                                   cfg.dn_label_noise_ratio, cfg.dn_box_noise_scale)
        t = self.transformer(srcs, masks, pos, dn)
        hs = list(t["hs"])
        if self.training:  # keeps label_enc in the graph without denoising queries (DDP unused-parameter check)
            hs[0] = hs[0] + self.label_enc.weight[0, 0] * 0.0
        logits = [head(h) for head, h in zip(self.class_embed, hs)]
        boxes = t["boxes"]
        dn_meta = dn.dn_meta if dn is not None else {"pad_size": 0, "num_dn_group": 0}
        if dn is not None:
            dn_logits, logits = zip(*(split_dn(x, dn_meta) for x in logits))
            dn_boxes, boxes = zip(*(split_dn(x, dn_meta) for x in boxes))
        out: Dict = self._layer_outputs(logits, boxes)
        out["interm_outputs"] = {"pred_logits": t["interm_logits"], "pred_boxes": t["interm_boxes"]}
        out["interm_outputs_for_matching_pre"] = {"pred_logits": t["interm_logits"], "pred_boxes": t["init_proposals"]}
        if use_dn:
            out["dn_meta"] = dn_meta
            if dn is not None:
                out["dn_outputs"] = self._layer_outputs(dn_logits, dn_boxes)
        return out

    def _layer_outputs(self, logits, boxes) -> Dict:
        out: Dict = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.config.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return out

    def build_criterion(self) -> nn.Module:
        from edgedet.losses.dn_criterion import build_dino_criterion  # losses import models' configs lazily

        return build_dino_criterion(self.config)


@MODELS.register("dino", config=DINOConfig)
def build_dino(cfg: DINOConfig) -> DINO:
    return DINO(cfg)
