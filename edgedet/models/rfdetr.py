"""RF-DETR (Robinson et al. 2025, Roboflow; LW-DETR's design on a DINOv2 backbone), family `rfdetr`.

Owns `RFDETRConfig`, the released sizes (`RFDETR_CONFIGS`: rfdetr_nano, _small, _medium, _base,
_large), the `RFDETR` detector and its registration. Layout and parameter names equal the official
`LWDETR` state_dict (`backbone.0.encoder.encoder.*` the windowed DINOv2, `backbone.0.projector.*`,
`transformer.*`, `class_embed`, `bbox_embed`, `refpoint_embed`, `query_feat`), so released
`.pth` files load key for key (`edgedet.checkpoints.rfdetr_official`).

Pieces: `edgedet.nn.dinov2` (backbone), `edgedet.nn.rfdetr_projector` (C2f projector),
`edgedet.nn.rfdetr_transformer` (two-stage selection, deformable decoder), the loss in
`edgedet.losses.rfdetr_criterion`.

Classes: `num_classes` counts the head's columns, i.e. the official `args.num_classes + 1` (91 for
the COCO releases, indexed by COCO category id). Group DETR: `group_detr` query groups (each with its
own two-stage heads) train at once; eval and export use group 0 only. Boxes are never passed through
a sigmoid (bbox reparameterisation). Preprocessing: ImageNet mean/std; the official resize has no
antialias; H and W must divide by patch_size * num_windows.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.config import ConfigError, ModelConfig
from edgedet.models.base import DetectorBase
from edgedet.models.set_loss_config import FocalSetLossConfig
from edgedet.nn.box_ops import box_cxcywh_to_xyxy
from edgedet.nn.dinov2 import WindowedDinov2, vit_layer_id
from edgedet.nn.mlp import MLP
from edgedet.nn.rfdetr_projector import MultiScaleProjector
from edgedet.nn.rfdetr_transformer import RFDETRTransformer, apply_box_delta
from edgedet.registry import MODELS

# encoder name -> (width, depth, heads) of the DINOv2 ViT it builds (mlp ratio 4, LayerNorm eps 1e-6)
ENCODERS = {"dinov2_windowed_small": (384, 12, 6), "dinov2_windowed_base": (768, 12, 12)}


@dataclass
class RFDETRConfig(FocalSetLossConfig, ModelConfig):
    """Defaults: the released RF-DETR-N (RFDETRNanoConfig) with its 91 COCO columns."""

    name: str = "rfdetr"
    num_classes: int = 91  # head columns = the official num_classes + 1
    encoder: str = "dinov2_windowed_small"
    vit_dims: Optional[List[int]] = None  # [width, depth, heads] instead of the encoder's (small test models)
    out_feature_indexes: List[int] = field(default_factory=lambda: [3, 6, 9, 12])
    window_block_indexes: Optional[List[int]] = None  # None: blocks up to the last output not in out_feature_indexes
    patch_size: int = 16
    num_windows: int = 2
    positional_encoding_size: int = 24  # position table side (tokens)
    resolution: int = 384  # the square training / native inference size
    projector_scale: List[str] = field(default_factory=lambda: ["P4"])
    layer_norm: bool = True
    hidden_dim: int = 256
    dec_layers: int = 2
    sa_nheads: int = 8
    ca_nheads: int = 16
    dec_n_points: int = 2
    dim_feedforward: int = 2048
    dropout: float = 0.0
    drop_path: float = 0.0
    num_queries: int = 300
    num_select: int = 300  # detections kept by the official postprocess
    group_detr: int = 13
    two_stage: bool = True
    bbox_reparam: bool = True
    lite_refpoint_refine: bool = True
    aux_loss: bool = True
    # loss weights and matcher costs (of the official SetCriterion with IoU-aware BCE): FocalSetLossConfig
    # optimiser recipe of the official training (used by `param_groups`)
    lr_vit_layer_decay: float = 0.8
    lr_component_decay: float = 0.7
    lr_encoder_mult: float = 1.5  # official lr_encoder / lr
    msda_impl: str = "pytorch"


_NANO: Dict[str, Any] = {}
# The released sizes (rfdetr.config RFDETR{Nano,Small,Medium,Base,Large}Config), as our fields.
RFDETR_CONFIGS: Dict[str, Dict[str, Any]] = {
    "rfdetr_nano": dict(_NANO),
    "rfdetr_small": dict(dec_layers=3, resolution=512, positional_encoding_size=32),
    "rfdetr_medium": dict(dec_layers=4, resolution=576, positional_encoding_size=36),
    "rfdetr_large": dict(dec_layers=4, resolution=704, positional_encoding_size=44),
    "rfdetr_base": dict(out_feature_indexes=[2, 5, 8, 11], patch_size=14, num_windows=4, dec_layers=3, resolution=560,
                        positional_encoding_size=37),
    # the first RF-DETR-L (rf-detr-large.pth, superseded by rfdetr_large): DINOv2-B, P3 + P5
    "rfdetr_large_2025": dict(encoder="dinov2_windowed_base", out_feature_indexes=[2, 5, 8, 11], patch_size=14,
                              num_windows=4, dec_layers=3, resolution=560, positional_encoding_size=37, hidden_dim=384,
                              sa_nheads=12, ca_nheads=24, dec_n_points=4, projector_scale=["P3", "P5"]),
}


def rfdetr_config(name: str, **overrides: Any) -> RFDETRConfig:
    """The released configuration `name` (see RFDETR_CONFIGS) with `overrides` (our field names)."""
    if name not in RFDETR_CONFIGS:
        raise ConfigError(f"unknown RF-DETR config '{name}'; released: {', '.join(RFDETR_CONFIGS)}")
    return RFDETRConfig(**{**RFDETR_CONFIGS[name], **overrides})


def _check_config(cfg: RFDETRConfig) -> None:
    if cfg.encoder not in ENCODERS:
        raise ConfigError(f"rfdetr encoder '{cfg.encoder}' is not one of {', '.join(ENCODERS)}")
    if not (cfg.two_stage and cfg.bbox_reparam and cfg.lite_refpoint_refine):
        raise ConfigError("rfdetr supports the released design only: two_stage, bbox_reparam and lite_refpoint_refine all true")
    if cfg.hidden_dim % cfg.ca_nheads or cfg.hidden_dim % cfg.sa_nheads:
        raise ConfigError(f"rfdetr hidden_dim {cfg.hidden_dim} must divide by sa_nheads {cfg.sa_nheads} and ca_nheads {cfg.ca_nheads}")
    if cfg.group_detr < 1 or cfg.num_queries < 1 or cfg.num_classes < 1:
        raise ConfigError("rfdetr group_detr, num_queries and num_classes must be positive")
    if sorted(cfg.out_feature_indexes) != list(cfg.out_feature_indexes):
        raise ConfigError(f"rfdetr out_feature_indexes must be ascending, got {cfg.out_feature_indexes}")
    width, depth, heads = cfg.vit_dims or ENCODERS[cfg.encoder]
    if width % heads or not 1 <= min(cfg.out_feature_indexes) <= max(cfg.out_feature_indexes) <= depth:
        raise ConfigError(f"rfdetr ViT width {width} must divide by its heads {heads}, and out_feature_indexes "
                          f"{cfg.out_feature_indexes} must be layer numbers in 1..{depth}")


class RFDETRBackbone(nn.Module):
    """`backbone.0`: the windowed DINOv2 (`encoder.encoder`) and the projector."""

    def __init__(self, cfg: RFDETRConfig):
        super().__init__()
        width, depth, heads = cfg.vit_dims or ENCODERS[cfg.encoder]
        self.encoder = nn.Module()
        self.encoder.encoder = WindowedDinov2(width, depth, heads, 4.0, cfg.patch_size, cfg.positional_encoding_size,
                                              cfg.num_windows, cfg.out_feature_indexes, cfg.window_block_indexes,
                                              drop_path_rate=cfg.drop_path)
        self.projector = MultiScaleProjector([width] * len(cfg.out_feature_indexes), cfg.hidden_dim, cfg.projector_scale,
                                             layer_norm=cfg.layer_norm)

    def forward(self, images: Tensor, record: Optional[Dict] = None) -> List[Tensor]:
        feats = self.encoder.encoder(images, record)
        if record is not None:
            record.update({f"backbone.vit_features.{i}": f for i, f in enumerate(feats)})
        out = self.projector(feats)
        if record is not None:
            record.update({f"projector.{i}": f for i, f in enumerate(out)})
        return out


class RFDETR(DetectorBase):
    """forward(images [B, 3, H, W] normalised, mask [B, H, W] True at padding or None, targets unused) ->
    pred_logits [B, Q, C] (sigmoid scores), pred_boxes [B, Q, 4] normalised cxcywh, aux_outputs,
    enc_outputs; Q = num_queries at eval, num_queries * group_detr while training."""

    score_activation = "sigmoid"
    class_dependent_patterns = ("class_embed.*", "transformer.enc_out_class_embed.*")

    def __init__(self, cfg: RFDETRConfig):
        super().__init__()
        _check_config(cfg)
        self.config = cfg
        d, c = cfg.hidden_dim, cfg.num_classes
        self.backbone = nn.ModuleList([RFDETRBackbone(cfg)])
        self.transformer = RFDETRTransformer(d, cfg.sa_nheads, cfg.ca_nheads, cfg.num_queries, cfg.dec_layers,
                                             cfg.dim_feedforward, cfg.dropout, cfg.group_detr, len(cfg.projector_scale),
                                             cfg.dec_n_points, c, cfg.msda_impl)
        self.class_embed = nn.Linear(d, c)
        self.bbox_embed = MLP(d, d, 4, 3)
        self.refpoint_embed = nn.Embedding(cfg.num_queries * cfg.group_detr, 4)
        self.query_feat = nn.Embedding(cfg.num_queries * cfg.group_detr, d)
        nn.init.zeros_(self.refpoint_embed.weight)
        nn.init.constant_(self.class_embed.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)
        # the official build deep-copies the initialised heads into every group's two-stage heads
        self.transformer.enc_out_class_embed = nn.ModuleList(copy.deepcopy(self.class_embed) for _ in range(cfg.group_detr))
        self.transformer.enc_out_bbox_embed = nn.ModuleList(copy.deepcopy(self.bbox_embed) for _ in range(cfg.group_detr))

    @property
    def input_size_divisor(self) -> int:
        return self.config.patch_size * self.config.num_windows

    def forward(self, images: Tensor, mask: Optional[Tensor] = None, targets: Optional[List[Dict[str, Tensor]]] = None,
                record: Optional[Dict] = None) -> Dict:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"RF-DETR expects images [B, 3, H, W], got {tuple(images.shape)}")
        cfg = self.config
        srcs = self.backbone[0](images, record)
        masks = None
        if mask is not None:
            masks = [F.interpolate(mask[None].float(), size=s.shape[-2:]).to(torch.bool)[0] for s in srcs]
        groups = cfg.group_detr if self.training else 1
        tokens = sum(int(s.shape[2] * s.shape[3]) for s in srcs)
        if self.training and tokens < cfg.num_queries:
            # the official model then uses raw learned reference boxes for the surplus queries (possibly negative sizes)
            raise ValueError(f"RF-DETR training needs at least num_queries={cfg.num_queries} feature tokens, but a "
                             f"{images.shape[2]}x{images.shape[3]} input gives {tokens}; train at a larger size "
                             f"(native: {cfg.resolution}) or with fewer queries")
        n = cfg.num_queries * groups
        out = self.transformer(srcs, masks, self.refpoint_embed.weight[:n], self.query_feat.weight[:n], groups, record)
        hs, refs = out["hs"], out["refs"]
        boxes = apply_box_delta(self.bbox_embed(hs), refs.unsqueeze(0))
        logits = self.class_embed(hs)
        result: Dict[str, Any] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1],
                                  "enc_outputs": {"pred_logits": out["enc_logits"], "pred_boxes": out["boxes_ts"]}}
        if cfg.aux_loss or not self.training:
            result["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        if self.training:
            result["group_detr"] = groups
        return result

    def param_groups(self, train_cfg: Any) -> List[Dict]:
        """The official optimiser groups: the ViT at lr * lr_encoder_mult * decay^(L + 1 - layer) *
        component_decay^2 (no weight decay on norms, biases, embeddings), the decoder at lr *
        component_decay, the rest at lr. Groups with equal settings are merged."""
        cfg = self.config
        num_layers = cfg.out_feature_indexes[-1] + 1
        buckets: Dict[tuple, List[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            lr, wd, kind = train_cfg.lr, train_cfg.weight_decay, "other"
            if name.startswith("backbone.0.encoder."):
                layer = vit_layer_id(name, num_layers)
                lr = train_cfg.lr * cfg.lr_encoder_mult * cfg.lr_vit_layer_decay ** (num_layers + 1 - layer) \
                    * cfg.lr_component_decay ** 2
                no_decay = any(k in name for k in ("gamma", "pos_embed", "rel_pos", "bias", "norm", "embeddings"))
                wd, kind = (0.0 if no_decay else wd), f"vit{layer}"
            elif name.startswith("transformer.decoder."):
                lr, kind = train_cfg.lr * cfg.lr_component_decay, "decoder"
            buckets.setdefault((kind, lr, wd), []).append(p)
        return [{"params": ps, "lr": lr, "weight_decay": wd, "name": kind} for (kind, lr, wd), ps in buckets.items()]

    def build_criterion(self) -> nn.Module:
        from edgedet.losses.rfdetr_criterion import build_rfdetr_criterion

        return build_rfdetr_criterion(self.config)


@torch.no_grad()
def official_postprocess(outputs: Dict[str, Tensor], orig_sizes: Tensor, num_select: int = 300) -> List[Dict[str, Tensor]]:
    """rfdetr's PostProcess: top num_select of sigmoid(logits) over queries x columns (stable order), label =
    column, boxes xyxy in pixels of orig_sizes [B, 2] (H, W), clamped to the image. No threshold."""
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    prob = logits.sigmoid().flatten(1)
    index = prob.argsort(dim=1, descending=True, stable=True)[:, :num_select]
    scores = prob.gather(1, index)
    c = logits.shape[-1]
    query, labels = torch.div(index, c, rounding_mode="floor"), index % c
    xyxy = box_cxcywh_to_xyxy(boxes).gather(1, query.unsqueeze(-1).expand(-1, -1, 4))
    h, w = orig_sizes.to(xyxy).unbind(1)
    scale = torch.stack([w, h, w, h], 1)[:, None]
    xyxy = torch.minimum((xyxy * scale).clamp(min=0), scale)
    return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, xyxy)]


@MODELS.register("rfdetr", config=RFDETRConfig)
def build_rfdetr(cfg: RFDETRConfig) -> RFDETR:
    return RFDETR(cfg)


__all__ = ["RFDETR", "RFDETRConfig", "RFDETR_CONFIGS", "rfdetr_config", "official_postprocess", "ENCODERS"]
