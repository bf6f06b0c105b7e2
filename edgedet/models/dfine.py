"""D-FINE (Peng et al. 2024, "Redefine Regression Task of DETRs as Fine-grained Distribution
Refinement"), the real-time DETR that DEIM checkpoints share.

Owns `DFINEConfig`, the `DFINE` detector and its registration as `dfine`. Layout and parameter
names equal Peterande/D-FINE's `DFINE(backbone=HGNetv2, encoder=HybridEncoder,
decoder=DFINETransformer)` state_dict, so official and DEIM checkpoints load key for key
(`edgedet.checkpoints.dfine_official`). Pieces: `edgedet.nn.hgnetv2` (backbone),
`edgedet.nn.dfine_encoder` (hybrid encoder), `edgedet.nn.dfine_decoder` (FDR decoder), the loss in
`edgedet.losses.dfine_criterion`.

Preprocessing as the official tools: RGB / 255, no mean/std. `deploy()` fuses the encoder's
conv+BN and RepVGG branches, precomputes W(n) and drops what eval mode never runs.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from edgedet.config import ConfigError
from edgedet.models.base import DetectorBase
from edgedet.models.realtime_detr_config import RealTimeDETRConfig
from edgedet.models.rtdetr import INPUT_MEAN, INPUT_STD
from edgedet.nn.denoising import build_cdn_queries, prepend_denoising, split_dn
from edgedet.nn.dfine_decoder import FDRDecoder
from edgedet.nn.dfine_encoder import ConvNorm, DFineHybridEncoder, VGGBlock
from edgedet.nn.hgnetv2 import HGNETV2_ARCHS, HGNETV2_STRIDES, HGNetv2
from edgedet.nn.mlp import MLP
from edgedet.nn.rtdetr_decoder import generate_anchors, select_topk
from edgedet.registry import MODELS


@dataclass
class DFINEConfig(RealTimeDETRConfig):
    """Defaults: the official `dfine_hgnetv2_n_coco.yml` (D-FINE-N) with 80 classes; the fields shared with
    RT-DETRv2 are in `RealTimeDETRConfig`."""

    name: str = "dfine"
    backbone: str = "B0"  # HGNetv2 variant B0..B6
    backbone_use_lab: bool = True
    backbone_return_idx: List[int] = field(default_factory=lambda: [2, 3])
    backbone_freeze_stem_only: bool = True
    # Hybrid encoder
    encoder_hidden_dim: int = 128
    encoder_dim_feedforward: int = 512
    use_encoder_idx: List[int] = field(default_factory=lambda: [1])
    expansion: float = 0.34
    depth_mult: float = 0.5
    # Decoder
    hidden_dim: int = 128
    feat_channels: List[int] = field(default_factory=lambda: [128, 128])
    num_levels: int = 2
    dim_feedforward: int = 512
    mlp_act: str = "relu"  # query_pos / enc / pre / FDR box heads; DEIM: silu (and `activation`, decoder FFN and LQE)
    num_points: List[int] = field(default_factory=lambda: [6, 6])
    reg_max: int = 32
    reg_scale: float = 4.0
    # Loss (official DFINECriterion weights)
    loss_vfl: float = 1.0
    loss_bbox: float = 5.0
    loss_giou: float = 2.0
    loss_fgl: float = 0.15
    loss_ddf: float = 1.5


def _check_config(cfg: DFINEConfig) -> None:
    if cfg.backbone not in HGNETV2_ARCHS:
        raise ConfigError(f"dfine backbone '{cfg.backbone}' is not an HGNetv2 variant; choose one of {', '.join(HGNETV2_ARCHS)}")
    if len(cfg.feat_channels) != len(cfg.backbone_return_idx):
        raise ConfigError(f"dfine feat_channels {cfg.feat_channels} needs one entry per backbone_return_idx {cfg.backbone_return_idx}")
    if len(cfg.feat_channels) > cfg.num_levels:
        raise ConfigError(f"dfine num_levels {cfg.num_levels} must be >= the number of encoder outputs {len(cfg.feat_channels)}")
    if len(cfg.num_points) != cfg.num_levels:
        raise ConfigError(f"dfine num_points {cfg.num_points} needs one count per level (num_levels={cfg.num_levels})")
    if cfg.hidden_dim % cfg.nheads:
        raise ConfigError(f"dfine hidden_dim {cfg.hidden_dim} must be divisible by nheads {cfg.nheads}")
    if cfg.reg_max < 4 or cfg.reg_max % 2:
        raise ConfigError(f"dfine reg_max must be an even number >= 4, got {cfg.reg_max}")
    if not -cfg.dec_layers <= cfg.eval_idx < cfg.dec_layers:
        raise ConfigError(f"dfine eval_idx {cfg.eval_idx} is outside the {cfg.dec_layers} decoder layers")


class DFineTransformer(nn.Module):
    """The official `DFINETransformer`: input projections, query selection, FDR decoder and heads."""

    def __init__(self, cfg: DFINEConfig):
        super().__init__()
        d, c = cfg.hidden_dim, cfg.num_classes
        self.cfg = cfg
        self.num_levels, self.num_queries, self.reg_max = cfg.num_levels, cfg.num_queries, cfg.reg_max
        self.eval_idx = cfg.eval_idx if cfg.eval_idx >= 0 else cfg.dec_layers + cfg.eval_idx
        self.input_proj = nn.ModuleList()
        for ch in cfg.feat_channels:
            self.input_proj.append(nn.Identity() if ch == d else self._proj(ch, 1, 1))
        ch = cfg.feat_channels[-1]
        for _ in range(cfg.num_levels - len(cfg.feat_channels)):
            self.input_proj.append(nn.Identity() if ch == d else self._proj(ch, 3, 2))
            ch = d
        self.up = nn.Parameter(torch.tensor([0.5]), requires_grad=False)
        self.reg_scale = nn.Parameter(torch.tensor([float(cfg.reg_scale)]), requires_grad=False)
        layer_args = dict(d_model=d, n_heads=cfg.nheads, dim_ff=cfg.dim_feedforward, num_points=cfg.num_points,
                          dropout=cfg.dropout, msda_impl=cfg.msda_impl, activation=cfg.activation,
                          cross_attn_method=cfg.cross_attn_method)
        self.decoder = FDRDecoder(layer_args, cfg.dec_layers, cfg.eval_idx, cfg.reg_max, self.up, self.reg_scale)
        if cfg.num_denoising > 0:
            self.denoising_class_embed = nn.Embedding(c + 1, d, padding_idx=c)
            nn.init.normal_(self.denoising_class_embed.weight[:-1])
        if cfg.learn_query_content:
            self.tgt_embed = nn.Embedding(cfg.num_queries, d)
        self.query_pos_head = MLP(4, 2 * d, d, 2, act=cfg.mlp_act)
        self.enc_output = nn.Sequential(OrderedDict([("proj", nn.Linear(d, d)), ("norm", nn.LayerNorm(d))]))
        self.enc_score_head = nn.Linear(d, c)
        self.enc_bbox_head = MLP(d, d, 4, 3, act=cfg.mlp_act)
        self.dec_score_head = nn.ModuleList(nn.Linear(d, c) for _ in range(cfg.dec_layers))
        self.pre_bbox_head = MLP(d, d, 4, 3, act=cfg.mlp_act)
        self.dec_bbox_head = nn.ModuleList(MLP(d, d, 4 * (cfg.reg_max + 1), 3, act=cfg.mlp_act) for _ in range(cfg.dec_layers))
        self._reset_parameters()

    def _proj(self, cin: int, k: int, s: int) -> nn.Module:
        d = self.cfg.hidden_dim
        return nn.Sequential(OrderedDict([("conv", nn.Conv2d(cin, d, k, s, padding=(k - 1) // 2, bias=False)), ("norm", nn.BatchNorm2d(d))]))

    def _reset_parameters(self) -> None:
        prior = -math.log((1 - 0.01) / 0.01)
        nn.init.constant_(self.enc_score_head.bias, prior)
        for head in (self.enc_bbox_head, self.pre_bbox_head, *self.dec_bbox_head):
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        for cls in self.dec_score_head:
            nn.init.constant_(cls.bias, prior)
        nn.init.xavier_uniform_(self.enc_output[0].weight)
        if self.cfg.learn_query_content:
            nn.init.xavier_uniform_(self.tgt_embed.weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[1].weight)
        for m in self.input_proj:
            if isinstance(m, nn.Sequential):
                nn.init.xavier_uniform_(m[0].weight)

    def deploy(self) -> None:
        """Official `convert_to_deploy`: score heads before eval_idx and bbox heads after it go."""
        self.dec_score_head = nn.ModuleList([nn.Identity()] * self.eval_idx + [self.dec_score_head[self.eval_idx]])
        self.dec_bbox_head = nn.ModuleList(h if i <= self.eval_idx else nn.Identity() for i, h in enumerate(self.dec_bbox_head))
        self.decoder.deploy()

    def encoder_input(self, feats: List[Tensor]) -> Tuple[Tensor, List[Tuple[int, int]]]:
        proj = [p(f) for p, f in zip(self.input_proj, feats)]
        for i in range(len(feats), self.num_levels):
            proj.append(self.input_proj[i](feats[-1] if i == len(feats) else proj[-1]))
        shapes = [(int(p.shape[2]), int(p.shape[3])) for p in proj]
        return torch.cat([p.flatten(2).permute(0, 2, 1) for p in proj], 1), shapes

    def select_queries(self, memory: Tensor, shapes: List[Tuple[int, int]], record: Optional[Dict] = None):
        """Top-Q encoder tokens by max class logit -> (content, reference logits, enc logits, enc boxes)."""
        anchors, valid = generate_anchors(shapes, eps=self.cfg.anchor_eps, device=memory.device)
        anchors = anchors.to(memory.dtype)
        memory = valid.to(memory.dtype) * memory
        out_memory = self.enc_output(memory)
        logits = self.enc_score_head(out_memory)
        anchors = anchors.expand(memory.shape[0], -1, -1)
        top_memory, top_logits, top_anchors, idx = select_topk(out_memory, logits, anchors, self.num_queries)
        if record is not None:
            record.update({"enc_score_logits": logits, "enc_topk_indices": idx})
        top_ref_unact = self.enc_bbox_head(top_memory) + top_anchors
        if self.cfg.learn_query_content:
            content = self.tgt_embed.weight.unsqueeze(0).tile([memory.shape[0], 1, 1])
        else:
            content = top_memory.detach()
        return content, top_ref_unact, top_logits

    def forward(self, feats: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None, record: Optional[Dict] = None) -> Dict:
        memory, shapes = self.encoder_input(feats)
        cfg = self.cfg
        dn = None
        if self.training and targets is not None and cfg.num_denoising > 0:
            dn = build_cdn_queries(targets, self.denoising_class_embed, cfg.num_queries, cfg.num_classes,
                                   cfg.num_denoising, cfg.label_noise_ratio, cfg.box_noise_scale)
        content, ref_unact, enc_logits = self.select_queries(memory, shapes, record)
        enc_boxes = torch.sigmoid(ref_unact) if self.training else None
        ref_unact = ref_unact.detach()
        content, ref_unact, attn_mask = prepend_denoising(dn, content, ref_unact)
        if record is not None:
            record.update({"decoder.init_content": content, "decoder.init_ref_points_unact": ref_unact})
        b = memory.shape[0]
        value = memory.reshape(b, memory.shape[1], cfg.nheads, -1)
        dec_record = {} if record is not None else None
        outs = self.decoder(content, ref_unact, value, shapes, self, attn_mask, dec_record)
        if record is not None:
            record.update({f"decoder.{k}": v for k, v in dec_record.items()})
            record["decoder.project"] = self.decoder.project()
        if not self.training:
            return {"pred_logits": outs["logits"][-1], "pred_boxes": outs["boxes"][-1]}
        return self._training_outputs(outs, enc_logits, enc_boxes, dn)

    def _training_outputs(self, outs: Dict, enc_logits: Tensor, enc_boxes: Tensor, dn) -> Dict:
        dn_meta = dn.dn_meta if dn is not None else None
        parts = {k: [split_dn(t, dn_meta) for t in v] for k, v in outs.items()}

        def layer_dicts(sel: int) -> List[Dict]:
            n = len(parts["logits"])
            teacher_corners, teacher_logits = parts["corners"][-1][sel], parts["logits"][-1][sel]
            return [{"pred_logits": parts["logits"][i][sel], "pred_boxes": parts["boxes"][i][sel],
                     "pred_corners": parts["corners"][i][sel], "ref_points": parts["refs"][i][sel],
                     "teacher_corners": teacher_corners, "teacher_logits": teacher_logits} for i in range(n)]

        layers = layer_dicts(1)
        out = dict(layers[-1])
        out.update({"up": self.up, "reg_scale": self.reg_scale, "reg_max": self.reg_max, "aux_outputs": layers[:-1],
                    "pre_outputs": {"pred_logits": parts["pre_logits"][0][1], "pred_boxes": parts["pre_boxes"][0][1]},
                    "enc_outputs": [{"pred_logits": enc_logits, "pred_boxes": enc_boxes}]})
        if dn is not None:
            out["dn_meta"] = dn_meta
            out["dn_outputs"] = layer_dicts(0)
            out["dn_pre_outputs"] = {"pred_logits": parts["pre_logits"][0][0], "pred_boxes": parts["pre_boxes"][0][0]}
        return out


class DFINE(DetectorBase):
    """forward(images [B, 3, H, W] in [0, 1], mask ignored, targets) -> pred_logits [B, Q, C]
    (sigmoid scores), pred_boxes [B, Q, 4] normalised cxcywh; in training mode also the per-layer
    corners and references the FGL/DDF losses need, aux/pre/enc outputs and denoising outputs."""

    score_activation = "sigmoid"
    # tensors whose rows are classes (re-initialised when fine-tuning to other classes)
    class_dependent_patterns = ("decoder.enc_score_head.*", "decoder.dec_score_head.*", "decoder.denoising_class_embed.*")
    input_mean, input_std = INPUT_MEAN, INPUT_STD  # RGB / 255, no mean/std (the official preprocessing)
    pads_as_content = True  # the mask is ignored: batches are padded with the runtime's letterbox colour

    def __init__(self, cfg: DFINEConfig):
        super().__init__()
        _check_config(cfg)
        self.config = cfg
        self.backbone = HGNetv2(cfg.backbone, use_lab=cfg.backbone_use_lab, return_idx=cfg.backbone_return_idx,
                                freeze_at=cfg.backbone_freeze_at, freeze_stem_only=cfg.backbone_freeze_stem_only,
                                freeze_norm=cfg.backbone_frozen_bn)
        strides = [HGNETV2_STRIDES[i] for i in cfg.backbone_return_idx]
        self.encoder = DFineHybridEncoder(
            self.backbone.out_channels, strides, cfg.encoder_hidden_dim, cfg.encoder_nhead, cfg.encoder_dim_feedforward,
            cfg.encoder_dropout, cfg.encoder_act, cfg.use_encoder_idx, cfg.num_encoder_layers, cfg.pe_temperature,
            cfg.expansion, cfg.depth_mult)
        self.decoder = DFineTransformer(cfg)

    @property
    def input_size_divisor(self) -> int:
        """H and W must divide by the coarsest backbone stride (data.size_divisor 0 pads batches to it)."""
        return max(self.backbone.strides)

    def forward(self, images: Tensor, mask: Optional[Tensor] = None, targets: Optional[List[Dict[str, Tensor]]] = None,
                record: Optional[Dict] = None) -> Dict:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"D-FINE expects images [B, 3, H, W], got {tuple(images.shape)}")
        stride = self.input_size_divisor
        if images.shape[2] % stride or images.shape[3] % stride:
            # the encoder upsamples each level x2 onto the next finer one, so every map must halve exactly
            raise ValueError(f"D-FINE needs image height and width divisible by {stride}, got {images.shape[2]}x{images.shape[3]}; "
                             f"resize or pad (the official tools use 640x640)")
        feats = self.backbone(images)
        if record is not None:
            record.update({f"backbone.{i}": f for i, f in enumerate(feats)})
        feats = self.encoder(feats)
        if record is not None:
            record.update({f"encoder.{i}": f for i, f in enumerate(feats)})
        return self.decoder(feats, targets, record)

    def deploy(self) -> "DFINE":
        """Eval mode plus the official deploy fusion (irreversible; outputs equal eval mode's)."""
        self.eval()
        for m in list(self.modules()):
            if isinstance(m, (ConvNorm, VGGBlock)):
                m.deploy()
        self.decoder.deploy()
        return self

    def build_criterion(self) -> nn.Module:
        from edgedet.losses.dfine_criterion import build_dfine_criterion

        return build_dfine_criterion(self.config)


@MODELS.register("dfine", config=DFINEConfig, input_mean=INPUT_MEAN, input_std=INPUT_STD)
def build_dfine(cfg: DFINEConfig) -> DFINE:
    return DFINE(cfg)
