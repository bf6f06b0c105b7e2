"""RT-DETRv2 (Lv et al. 2024, "RT-DETRv2: Improved Baseline with Bag-of-Freebies"), family `rtdetr`.

model = `backbone` (PResNet vd, `edgedet.nn.presnet`) -> `encoder` (HybridEncoder: AIFI + CCFM,
`edgedet.nn.hybrid_encoder`) -> `decoder` (`RTDETRTransformerV2` below: query selection from
encoder tokens, deformable decoder with per-level points, CDN denoising in training). Every
parameter name equals lyuwenyu/RT-DETR's, so its release checkpoints load unchanged
(`edgedet.checkpoints.load_official(path, config="rtdetrv2_r18vd")`).

Inputs are RGB scaled to [0, 1] with **no** mean/std normalisation (the official
preprocessing); the family declares it (`INPUT_MEAN`/`INPUT_STD`) so training data and export
manifests follow. `deploy()` fuses the RepVGG branches for inference. Classification is
sigmoid; `official_postprocess` is the official postprocessor (top-k over query x class).
Defaults are the released `rtdetrv2_r18vd_120e_coco` config.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from edgedet.config import ConfigError
from edgedet.models.base import DetectorBase
from edgedet.models.realtime_detr_config import RealTimeDETRConfig
from edgedet.nn.box_ops import box_cxcywh_to_xyxy
from edgedet.nn.denoising import build_cdn_queries, prepend_denoising, split_dn
from edgedet.nn.hybrid_encoder import HybridEncoder
from edgedet.nn.mlp import MLP
from edgedet.nn.presnet import PRESNET_DEPTHS, PResNet
from edgedet.nn.rtdetr_decoder import (
    CROSS_ATTN_METHODS,
    QUERY_SELECT_METHODS,
    InputProjection,
    RTDETRDecoder,
    RTDETRDecoderLayer,
    focal_prior_bias,
    generate_anchors,
    select_topk,
)
from edgedet.registry import MODELS

INPUT_MEAN = (0.0, 0.0, 0.0)
INPUT_STD = (1.0, 1.0, 1.0)
# COCO category id of each of the 80 contiguous labels (the official `mscoco_label2category`).
MSCOCO_CATEGORY_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31,
                       32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57,
                       58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87,
                       88, 89, 90)


@dataclass
class RTDETRConfig(RealTimeDETRConfig):
    """RT-DETRv2; defaults = rtdetrv2_r18vd_120e_coco (80 classes, 640x640); the fields shared with D-FINE
    are in `RealTimeDETRConfig`."""

    name: str = "rtdetr"
    backbone: str = "presnet18"  # presnet18/34/50/101 (variant below, "vd"); resnet18/... = variant "b"
    backbone_variant: str = "d"
    backbone_return_idx: List[int] = field(default_factory=lambda: [1, 2, 3])
    backbone_act: str = "relu"
    # HybridEncoder
    encoder_hidden_dim: int = 256
    feat_strides: List[int] = field(default_factory=lambda: [8, 16, 32])
    encoder_dim_feedforward: int = 1024
    use_encoder_idx: List[int] = field(default_factory=lambda: [2])
    expansion: float = 0.5
    depth_mult: float = 1.0
    fusion_act: str = "silu"
    # RTDETRTransformerv2
    hidden_dim: int = 256
    num_levels: int = 3
    num_points: List[int] = field(default_factory=lambda: [4, 4, 4])
    dim_feedforward: int = 1024
    query_select_method: str = "default"
    eval_spatial_size: Optional[List[int]] = None  # [H, W]: anchors become (checkpointed) buffers
    # Loss weights (RTDETRCriterionv2 defaults of the released configs).
    vfl_loss_coef: float = 1.0
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0


def backbone_depth_and_variant(cfg: RTDETRConfig) -> Tuple[int, str]:
    """presnetN -> (N, cfg.backbone_variant); resnetN -> (N, "b"): the classic ResNet stem, no avg-pool shortcut."""
    name = cfg.backbone
    prefix = next((p for p in ("presnet", "resnet") if name.startswith(p)), "")
    depth = name[len(prefix):]
    if not prefix or not depth.isdigit() or int(depth) not in PRESNET_DEPTHS:
        valid = ", ".join([f"presnet{d}" for d in PRESNET_DEPTHS] + [f"resnet{d}" for d in PRESNET_DEPTHS])
        raise ConfigError(f"rtdetr backbone '{name}' is not supported. Valid: {valid}")
    return int(depth), ("b" if prefix == "resnet" else cfg.backbone_variant)


def check_config(cfg: RTDETRConfig) -> None:
    backbone_depth_and_variant(cfg)
    if cfg.cross_attn_method not in CROSS_ATTN_METHODS:
        raise ConfigError(f"rtdetr cross_attn_method '{cfg.cross_attn_method}' is not valid. Valid: {', '.join(CROSS_ATTN_METHODS)}")
    if cfg.query_select_method not in QUERY_SELECT_METHODS:
        raise ConfigError(f"rtdetr query_select_method '{cfg.query_select_method}' is not valid. "
                          f"Valid: {', '.join(QUERY_SELECT_METHODS)}")
    if len(cfg.num_points) != cfg.num_levels or min(cfg.num_points, default=0) < 1:
        raise ConfigError(f"rtdetr num_points {cfg.num_points} must give a positive count for each of the {cfg.num_levels} levels")
    if len(cfg.feat_strides) != len(cfg.backbone_return_idx):
        raise ConfigError(f"rtdetr feat_strides {cfg.feat_strides} must have one stride per backbone level "
                          f"(backbone_return_idx {cfg.backbone_return_idx})")
    if cfg.num_levels < len(cfg.feat_strides):
        raise ConfigError(f"rtdetr num_levels {cfg.num_levels} must be at least the {len(cfg.feat_strides)} encoder levels")
    if cfg.hidden_dim % cfg.nheads or cfg.encoder_hidden_dim % 4:
        raise ConfigError(f"rtdetr hidden_dim {cfg.hidden_dim} must divide by nheads {cfg.nheads} and "
                          f"encoder_hidden_dim {cfg.encoder_hidden_dim} by 4")
    if cfg.eval_spatial_size is not None and len(cfg.eval_spatial_size) != 2:
        raise ConfigError(f"rtdetr eval_spatial_size must be [H, W] or null, got {cfg.eval_spatial_size}")


class RTDETRTransformerV2(nn.Module):
    """forward(encoder feats, targets/denoising) -> dict of per-layer boxes/logits and encoder top-k outputs."""

    def __init__(self, cfg: RTDETRConfig, feat_channels: List[int]):
        super().__init__()
        d = cfg.hidden_dim
        self.num_queries, self.num_classes = cfg.num_queries, cfg.num_classes
        self.query_select_method, self.anchor_eps = cfg.query_select_method, cfg.anchor_eps
        self.boxes_for_selected_only = True  # a graph choice, not a config: both orders give the same numbers
        self.feat_strides = list(cfg.feat_strides) + [cfg.feat_strides[-1] * 2 ** (i + 1)
                                                      for i in range(cfg.num_levels - len(cfg.feat_strides))]
        self.input_proj = InputProjection(feat_channels, d, cfg.num_levels)
        layer = RTDETRDecoderLayer(d, cfg.nheads, cfg.dim_feedforward, cfg.dropout, cfg.activation, cfg.num_levels,
                                   cfg.num_points, cfg.cross_attn_method, cfg.msda_impl)
        self.decoder = RTDETRDecoder(layer, cfg.dec_layers, cfg.eval_idx)
        if cfg.num_denoising > 0:
            self.denoising_class_embed = nn.Embedding(cfg.num_classes + 1, d, padding_idx=cfg.num_classes)
            nn.init.normal_(self.denoising_class_embed.weight[:-1])
        if cfg.learn_query_content:
            self.tgt_embed = nn.Embedding(cfg.num_queries, d)
            nn.init.xavier_uniform_(self.tgt_embed.weight)
        self.query_pos_head = MLP(4, 2 * d, d, 2)
        self.enc_output = nn.Sequential(OrderedDict([("proj", nn.Linear(d, d)), ("norm", nn.LayerNorm(d))]))
        self.enc_score_head = nn.Linear(d, 1 if cfg.query_select_method == "agnostic" else cfg.num_classes)
        self.enc_bbox_head = MLP(d, d, 4, 3)
        self.dec_score_head = nn.ModuleList(nn.Linear(d, cfg.num_classes) for _ in range(cfg.dec_layers))
        self.dec_bbox_head = nn.ModuleList(MLP(d, d, 4, 3) for _ in range(cfg.dec_layers))
        if cfg.eval_spatial_size:
            h, w = cfg.eval_spatial_size
            anchors, valid = generate_anchors([(int(h / s), int(w / s)) for s in self.feat_strides], eps=cfg.anchor_eps)
            self.register_buffer("anchors", anchors)
            self.register_buffer("valid_mask", valid)
        bias = focal_prior_bias(0.01)
        nn.init.constant_(self.enc_score_head.bias, bias)
        for head in [self.enc_bbox_head, *self.dec_bbox_head]:
            nn.init.constant_(head.layers[-1].weight, 0)
            nn.init.constant_(head.layers[-1].bias, 0)
        for head in self.dec_score_head:
            nn.init.constant_(head.bias, bias)
        nn.init.xavier_uniform_(self.enc_output[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[1].weight)

    def anchors_for(self, shapes, memory: Tensor) -> Tuple[Tensor, Tensor]:
        cached = getattr(self, "anchors", None)
        if cached is not None and not self.training and cached.shape[1] == memory.shape[1]:
            return cached.to(memory.dtype), self.valid_mask
        anchors, valid = generate_anchors(shapes, eps=self.anchor_eps, device=memory.device)
        return anchors.to(memory.dtype), valid

    def forward(self, feats: List[Tensor], dn=None) -> Dict:
        memory, shapes = self.input_proj.flatten(feats)
        anchors, valid = self.anchors_for(shapes, memory)
        memory = valid.to(memory.dtype) * memory
        output_memory = self.enc_output(memory)
        enc_logits = self.enc_score_head(output_memory)
        if self.boxes_for_selected_only:
            # The box head is token-wise, so it can run on the selected tokens only (as D-FINE's code
            # does): the official numbers without ~8000 unused MLP rows (4% of R18's frame on a CPU).
            topk_memory, topk_logits, topk_anchors, topk_index = select_topk(
                output_memory, enc_logits, anchors.expand(memory.shape[0], -1, -1), self.num_queries,
                self.query_select_method, self.num_classes)
            topk_coords = self.enc_bbox_head(topk_memory) + topk_anchors
        else:  # the official order: boxes for every token, then selection (benches/realtime.py's baseline)
            topk_memory, topk_logits, topk_coords, topk_index = select_topk(
                output_memory, enc_logits, self.enc_bbox_head(output_memory) + anchors, self.num_queries,
                self.query_select_method, self.num_classes)
        if hasattr(self, "tgt_embed"):
            content = self.tgt_embed.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)
        else:
            content = topk_memory.detach()
        ref_unact = topk_coords.detach()
        content, ref_unact, attn_mask = prepend_denoising(dn, content, ref_unact)
        boxes, logits = self.decoder(content, ref_unact, memory, shapes, self.dec_bbox_head, self.dec_score_head,
                                     self.query_pos_head, attn_mask=attn_mask)
        return {"boxes": boxes, "logits": logits, "enc_logits": enc_logits, "enc_topk_index": topk_index,
                "enc_topk_logits": topk_logits, "enc_topk_boxes": topk_coords.sigmoid()}


class RTDETR(DetectorBase):
    """forward(images [B, 3, H, W] RGB in [0, 1], mask ignored, targets) -> output dict.

    pred_logits [B, Q, C] (sigmoid), pred_boxes [B, Q, 4] normalised cxcywh. Training adds
    aux_outputs (earlier layers), enc_outputs (the selected encoder proposals), and with targets
    dn_meta / dn_outputs (the denoising queries, same layout as DINO's). `mask` is ignored: like
    the official model, RT-DETR sees padding as image content (batches are resized to one size).

    Denoising reuses DINO's CDN (`edgedet.nn.denoising`) with RT-DETR's label book
    `decoder.denoising_class_embed` and box_noise_scale 1.0. Two training-only details differ
    from the official code: padding slots get zero content (not the padding class's row) and
    noised boxes enter the decoder through inverse_sigmoid with eps 1e-3 (official 1e-5).
    """

    score_activation = "sigmoid"
    # re-initialised (or kept by model.keep_classes) when fine-tuning to other classes
    class_dependent_patterns = ("decoder.enc_score_head.*", "decoder.dec_score_head.*", "decoder.denoising_class_embed.*")
    input_mean = INPUT_MEAN
    input_std = INPUT_STD
    pads_as_content = True  # the mask is ignored: batches are padded with the runtime's letterbox colour

    def __init__(self, cfg: RTDETRConfig):
        super().__init__()
        check_config(cfg)
        self.config = cfg
        depth, variant = backbone_depth_and_variant(cfg)
        self.backbone = PResNet(depth, variant, 4, cfg.backbone_return_idx,
                                cfg.backbone_act, cfg.backbone_freeze_at, cfg.backbone_frozen_bn)
        if cfg.backbone_weights:
            load_backbone_weights(self.backbone, cfg.backbone_weights)
        self.encoder = HybridEncoder(self.backbone.out_channels, cfg.feat_strides, cfg.encoder_hidden_dim,
                                     cfg.encoder_nhead, cfg.encoder_dim_feedforward, cfg.encoder_dropout, cfg.encoder_act,
                                     cfg.use_encoder_idx, cfg.num_encoder_layers, cfg.pe_temperature, cfg.expansion,
                                     cfg.depth_mult, cfg.fusion_act)
        self.decoder = RTDETRTransformerV2(cfg, self.encoder.out_channels)

    @property
    def input_size_divisor(self) -> int:
        """H and W must divide by the coarsest stride: the encoder upsamples each level x2 onto the next finer
        one and the anchors are laid out at (H/s, W/s); data.size_divisor 0 pads batches to it."""
        return max(self.decoder.feat_strides)

    def forward(self, images: Tensor, mask: Optional[Tensor] = None, targets: Optional[List[Dict[str, Tensor]]] = None) -> Dict:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"RT-DETR expects images [B, 3, H, W], got {tuple(images.shape)}")
        d = self.input_size_divisor
        if not torch.jit.is_tracing() and (images.shape[2] % d or images.shape[3] % d):
            raise ValueError(f"RT-DETR needs image height and width divisible by {d}, got {images.shape[2]}x{images.shape[3]}; "
                             f"pad or resize (edgedet's data loaders pad to data.size_divisor, 0 = {d})")
        cfg = self.config
        dn = None
        if self.training and targets is not None and cfg.num_denoising > 0:
            if len(targets) != images.shape[0]:
                raise ValueError(f"RT-DETR got {len(targets)} targets for {images.shape[0]} images")
            dn = build_cdn_queries(targets, self.decoder.denoising_class_embed, cfg.num_queries, cfg.num_classes,
                                   cfg.num_denoising, cfg.label_noise_ratio, cfg.box_noise_scale)
        t = self.decoder(self.encoder(self.backbone(images)), dn)
        logits, boxes = t["logits"], t["boxes"]
        if self.training and cfg.num_denoising > 0:  # keeps the label book in the graph (DDP unused-parameter check)
            logits = [logits[0] + self.decoder.denoising_class_embed.weight[0, 0] * 0.0] + list(logits[1:])
        dn_meta = dn.dn_meta if dn is not None else None
        if dn_meta is not None:
            dn_logits, logits = zip(*(split_dn(x, dn_meta) for x in logits))
            dn_boxes, boxes = zip(*(split_dn(x, dn_meta) for x in boxes))
        out: Dict = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.training:
            if cfg.aux_loss:
                out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
            out["enc_outputs"] = {"pred_logits": t["enc_topk_logits"], "pred_boxes": t["enc_topk_boxes"],
                                  "class_agnostic": cfg.query_select_method == "agnostic"}
            if dn_meta is not None:
                out["dn_meta"] = dn_meta
                out["dn_outputs"] = {"pred_logits": dn_logits[-1], "pred_boxes": dn_boxes[-1],
                                     "aux_outputs": [{"pred_logits": a, "pred_boxes": b}
                                                     for a, b in zip(dn_logits[:-1], dn_boxes[:-1])]}
            elif targets is not None and cfg.num_denoising > 0:
                out["dn_meta"] = {"pad_size": 0, "num_dn_group": 0}
        return out

    def deploy(self) -> "RTDETR":
        """Eval mode with every RepVGG block fused into one 3x3 conv (the official `deploy()`)."""
        self.eval()
        for m in self.modules():
            if hasattr(m, "convert_to_deploy"):
                m.convert_to_deploy()
        return self

    def build_criterion(self) -> nn.Module:
        from edgedet.losses.rtdetr_criterion import build_rtdetr_criterion  # losses import models' configs lazily

        return build_rtdetr_criterion(self.config)


def load_backbone_weights(backbone: PResNet, path: str) -> None:
    """Load a PResNet state_dict (the official ImageNet `*_vd_pretrained_from_paddle.pth` files), strictly."""
    from edgedet.checkpoints.safe_load import safe_torch_load

    from edgedet.nn.backbone import check_shapes

    state = safe_torch_load(path)
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"backbone_weights {path} hold no state_dict of tensors; pass a PResNet .pth")
    check_shapes(backbone.state_dict(), state, f"backbone_weights {path}",
                 "a PResNet of another depth or variant: pass the ImageNet weights of this backbone")
    result = backbone.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    missing = [k for k in result.missing_keys]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"backbone_weights {path} do not fit this PResNet: missing {missing[:4]}, unexpected {unexpected[:4]}")


@torch.no_grad()
def official_postprocess(outputs: Dict[str, Tensor], orig_target_sizes: Tensor, num_top_queries: int = 300,
                         remap_mscoco_category: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """The official RTDETRPostProcessor (focal mode) -> (labels [B, K], boxes [B, K, 4] xyxy pixels, scores [B, K]).

    orig_target_sizes [B, 2] is (W, H), width first, as the official datasets build it.
    Top-K over sigmoid(logits) flattened query-major; label = index mod C, query = index // C.
    """
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    bbox = box_cxcywh_to_xyxy(boxes) * orig_target_sizes.repeat(1, 2).unsqueeze(1).to(boxes.dtype)
    num_classes = logits.shape[-1]
    scores, index = torch.topk(logits.sigmoid().flatten(1), num_top_queries, dim=-1)
    labels = index - index // num_classes * num_classes
    index = index // num_classes
    bbox = bbox.gather(1, index.unsqueeze(-1).expand(-1, -1, 4))
    if remap_mscoco_category:
        table = torch.tensor(MSCOCO_CATEGORY_IDS, device=labels.device)
        if int(labels.max()) >= len(table):
            raise ValueError(f"remap_mscoco_category needs labels < {len(table)}, got {int(labels.max())}")
        labels = table[labels]
    return labels, bbox, scores


@MODELS.register("rtdetr", config=RTDETRConfig, input_mean=INPUT_MEAN, input_std=INPUT_STD)
def build_rtdetr(cfg: RTDETRConfig) -> RTDETR:
    return RTDETR(cfg)


__all__ = ["RTDETRConfig", "RTDETR", "RTDETRTransformerV2", "official_postprocess", "MSCOCO_CATEGORY_IDS"]
