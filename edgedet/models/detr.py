"""DETR (Carion et al. 2020): ResNet + transformer encoder-decoder + set prediction.

Registered as `detr`. Parameter names equal facebookresearch/detr's except the backbone,
which lives under `backbone.body.` (official: `backbone.0.body.`) and, with learned position
embeddings, `position_embedding.` (official: `backbone.1.`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from torch import Tensor, nn

from edgedet.config import ModelConfig
from edgedet.models.base import DetectorBase
from edgedet.nn.backbone import Backbone
from edgedet.nn.mlp import MLP
from edgedet.nn.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from edgedet.nn.transformer import Transformer
from edgedet.registry import MODELS, Registry

POSITION_EMBEDDINGS = Registry("position embedding")
POSITION_EMBEDDINGS.register("sine")(
    lambda num_pos_feats, offset=0.0: PositionEmbeddingSine(num_pos_feats, normalize=True, offset=offset)
)
POSITION_EMBEDDINGS.register("learned")(lambda num_pos_feats, offset=0.0: PositionEmbeddingLearned(num_pos_feats))


def build_position_embedding(kind: str, num_pos_feats: int, offset: float = 0.0) -> nn.Module:
    """`sine` (normalised; `offset` 0.5 for Deformable DETR) or `learned` (50x50 tables)."""
    return POSITION_EMBEDDINGS.get(kind)(num_pos_feats, offset)


@dataclass
class DETRConfig(ModelConfig):
    """Defaults are the paper's DETR-R50 recipe."""

    name: str = "detr"
    backbone: str = "resnet50"
    hidden_dim: int = 256
    num_queries: int = 100
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: str = "relu"
    pre_norm: bool = False
    position_embedding: str = "sine"  # sine | learned
    dilation: bool = False
    train_backbone: bool = True
    # Hungarian matching costs and loss weights.
    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    ce_loss_coef: float = 1.0
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    eos_coef: float = 0.1


def aux_outputs(logits: Tensor, boxes: Tensor) -> List[Dict[str, Tensor]]:
    """Per-layer heads [num_layers, B, Q, *] -> dicts for every layer but the last."""
    return [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]


class DETR(DetectorBase):
    """forward(images [B, 3, H, W], mask [B, H, W] True at padding) ->
    pred_logits [B, Q, C + 1] (last column = no-object, softmax), pred_boxes [B, Q, 4]
    normalised cxcywh, aux_outputs (one dict per earlier decoder layer when aux_loss)."""

    class_dependent_patterns = ("class_embed.*",)  # num_classes + 1 rows: the last is "no object"

    score_activation = "softmax"

    def __init__(self, cfg: DETRConfig):
        super().__init__()
        if cfg.hidden_dim % cfg.nheads != 0:
            raise ValueError(f"hidden_dim ({cfg.hidden_dim}) must be divisible by nheads ({cfg.nheads})")
        self.config = cfg
        hidden = cfg.hidden_dim
        self.backbone = Backbone(cfg.backbone, (4,), cfg.train_backbone, frozen_bn=cfg.backbone_frozen_bn,
                                 dilation=cfg.dilation, weights=cfg.backbone_weights)
        self.position_embedding = build_position_embedding(cfg.position_embedding, hidden // 2)
        self.transformer = Transformer(
            hidden, cfg.nheads, cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward, cfg.dropout, cfg.activation, cfg.pre_norm
        )
        self.input_proj = nn.Conv2d(self.backbone.num_channels[-1], hidden, kernel_size=1)
        self.query_embed = nn.Embedding(cfg.num_queries, hidden)
        self.class_embed = nn.Linear(hidden, cfg.num_classes + 1)
        self.bbox_embed = MLP(hidden, hidden, 4, 3)

    def forward(self, images: Tensor, mask: Optional[Tensor] = None, targets: Optional[List[Dict[str, Tensor]]] = None) -> Dict:
        features, feat_mask = self.backbone(images, mask)[-1]
        pos = self.position_embedding(feat_mask).to(features.dtype)
        hs, _ = self.transformer(self.input_proj(features), feat_mask, self.query_embed.weight, pos)
        logits = self.class_embed(hs)
        boxes = self.bbox_embed(hs).sigmoid()
        return {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "aux_outputs": aux_outputs(logits, boxes) if self.config.aux_loss else [],
        }

    def build_criterion(self) -> nn.Module:
        from edgedet.losses import HungarianMatcher, SetCriterion

        c = self.config
        matcher = HungarianMatcher(cost_class=c.cost_class, cost_bbox=c.cost_bbox, cost_giou=c.cost_giou)
        base = {"loss_ce": c.ce_loss_coef, "loss_bbox": c.bbox_loss_coef, "loss_giou": c.giou_loss_coef}
        weight_dict = dict(base)
        if c.aux_loss:
            for i in range(c.dec_layers - 1):
                weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
        return SetCriterion(c.num_classes, matcher, weight_dict, losses=("labels", "boxes", "cardinality"),
                            loss_class="ce", eos_coef=c.eos_coef)


@MODELS.register("detr", config=DETRConfig)
def build_detr(cfg: DETRConfig) -> DETR:
    return DETR(cfg)
