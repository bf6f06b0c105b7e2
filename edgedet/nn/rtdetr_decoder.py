"""RT-DETRv2's decoder side: input projections, query selection, deformable decoder, heads.

Layout and parameter names equal lyuwenyu/RT-DETR's `RTDETRTransformerv2` (module `decoder`
of the model), so official checkpoints load unchanged:

- `input_proj.{l}.conv/norm`: 1x1 conv + BN per encoder level (a stride-2 3x3 conv for extra
  levels beyond the encoder's);
- query selection (`enc_output.proj/norm`, `enc_score_head`, `enc_bbox_head`): every encoder
  token is scored; the `num_queries` best (max over classes, descending) become the decoder
  queries: content = the selected `enc_output` rows (detached), reference box = the selected
  `enc_bbox_head` output + anchor logit (detached);
- `decoder.layers.{i}`: self-attention -> norm1 -> multi-scale deformable cross-attention with
  per-level point counts -> norm2 -> FFN -> norm3; `query_pos_head` MLP(4 -> 2D -> D) embeds the
  current reference box each layer; `dec_bbox_head[i]` refines the box in logit space,
  `dec_score_head[i]` classifies (sigmoid);
- `denoising_class_embed`: the label book of the contrastive denoising queries (training).

The deformable attention calls `edgedet.ops.msda` in its per-level layout
(`num_points_per_level`) with sampling `method` "default" (bilinear) or "discrete" (nearest
pixel, the official rule). D-FINE reuses `MSDeformableAttentionV2`, `generate_anchors`,
`select_topk` and `InputProjection`.
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.nn.box_ops import inverse_sigmoid
from edgedet.nn.presnet import activation
from edgedet.ops.msda import multi_scale_deformable_attention

CROSS_ATTN_METHODS = ("default", "discrete")
QUERY_SELECT_METHODS = ("default", "one2many", "agnostic")
Shapes = List[Tuple[int, int]]


def focal_prior_bias(prior_prob: float = 0.01) -> float:
    """Bias that makes sigmoid start at `prior_prob` (every class rare at init)."""
    return -math.log((1 - prior_prob) / prior_prob)


class MSDeformableAttentionV2(nn.Module):
    """RT-DETRv2's deformable cross-attention.

    query [B, Lq, D], reference boxes [B, Lq, 1, 4] (cxcywh in [0, 1]) or points [B, Lq, L, 2],
    value [B, S, D] (levels flattened), shapes [(H, W)] per level -> [B, Lq, D].
    With boxes, point k of level l samples at ref_xy + offset_k · (1 / P_l) · ref_wh · offset_scale;
    one softmax spans all Σ P_l points of a head.
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 4, num_points=4,
                 method: str = "default", offset_scale: float = 0.5, msda_impl: str = "pytorch"):
        super().__init__()
        if method not in CROSS_ATTN_METHODS:
            raise ValueError(f"unknown cross_attn_method '{method}'. Valid: {', '.join(CROSS_ATTN_METHODS)}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        points = list(num_points) if isinstance(num_points, (list, tuple)) else [int(num_points)] * num_levels
        if len(points) != num_levels:
            raise ValueError(f"num_points {points} must give one count per level ({num_levels} levels)")
        self.embed_dim, self.num_heads, self.num_levels = embed_dim, num_heads, num_levels
        self.num_points_list = points
        self.offset_scale = offset_scale
        self.method = method
        self.impl = msda_impl  # MSDA implementation name (switched by converters for export)
        self.head_dim = embed_dim // num_heads
        self.register_buffer("num_points_scale", torch.tensor([1 / n for n in points for _ in range(n)], dtype=torch.float32))
        total = num_heads * sum(points)
        self.sampling_offsets = nn.Linear(embed_dim, total * 2)
        self.attention_weights = nn.Linear(embed_dim, total)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self._reset_parameters()
        if method == "discrete":  # nearest-pixel sampling has no gradient w.r.t. the offsets
            for p in self.sampling_offsets.parameters():
                p.requires_grad_(False)

    def _reset_parameters(self) -> None:
        nn.init.constant_(self.sampling_offsets.weight, 0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.reshape(self.num_heads, 1, 2).tile([1, sum(self.num_points_list), 1])
        grid = grid * torch.cat([torch.arange(1, n + 1) for n in self.num_points_list]).reshape(1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.constant_(self.attention_weights.weight, 0)
        nn.init.constant_(self.attention_weights.bias, 0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0)

    def sampling(self, query: Tensor, reference: Tensor, shapes: Shapes) -> Tuple[Tensor, Tensor]:
        """-> sampling locations [B, Lq, M, ΣP, 2] and softmaxed weights [B, Lq, M, ΣP]."""
        b, lq = query.shape[:2]
        total = sum(self.num_points_list)
        offsets = self.sampling_offsets(query).reshape(b, lq, self.num_heads, total, 2)
        weights = F.softmax(self.attention_weights(query).reshape(b, lq, self.num_heads, total), dim=-1)
        if reference.shape[-1] == 2:
            normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
            normalizer = normalizer.repeat_interleave(torch.tensor(self.num_points_list, device=query.device), dim=0)
            ref = reference.repeat_interleave(torch.tensor(self.num_points_list, device=query.device), dim=2)
            locations = ref[:, :, None] + offsets / normalizer
        elif reference.shape[-1] == 4:
            scale = self.num_points_scale.to(query.dtype).unsqueeze(-1)
            locations = reference[:, :, None, :, :2] + offsets * scale * reference[:, :, None, :, 2:] * self.offset_scale
        else:
            raise ValueError(f"reference_points must end in 2 or 4 values, got {reference.shape[-1]}")
        return locations, weights

    def forward(self, query: Tensor, reference: Tensor, value: Tensor, shapes: Shapes,
                value_mask: Optional[Tensor] = None) -> Tensor:
        b, lq = query.shape[:2]
        value = self.value_proj(value)
        if value_mask is not None:
            value = value * value_mask.to(value.dtype).unsqueeze(-1)
        value = value.reshape(b, value.shape[1], self.num_heads, self.head_dim)
        locations, weights = self.sampling(query, reference, shapes)
        out = multi_scale_deformable_attention(value, shapes, locations, weights, impl=self.impl,
                                               num_points_per_level=tuple(self.num_points_list), method=self.method)
        return self.output_proj(out)


class RTDETRDecoderLayer(nn.Module):
    """self-attn -> add&norm1 -> deformable cross-attn -> add&norm2 -> FFN -> add&norm3 (post-norm)."""

    def __init__(self, d_model: int = 256, n_head: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0,
                 act: str = "relu", n_levels: int = 4, n_points=4, cross_attn_method: str = "default",
                 msda_impl: str = "pytorch"):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_head, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformableAttentionV2(d_model, n_head, n_levels, n_points, cross_attn_method, msda_impl=msda_impl)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = activation(act)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, target: Tensor, reference: Tensor, memory: Tensor, shapes: Shapes, attn_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None, query_pos: Optional[Tensor] = None) -> Tensor:
        q = k = target if query_pos is None else target + query_pos
        attn, _ = self.self_attn(q, k, value=target, attn_mask=attn_mask, need_weights=False)
        target = self.norm1(target + self.dropout1(attn))
        query = target if query_pos is None else target + query_pos
        target = self.norm2(target + self.dropout2(self.cross_attn(query, reference, memory, shapes, memory_mask)))
        ffn = self.linear2(self.dropout3(self.activation(self.linear1(target))))
        return self.norm3(target + self.dropout4(ffn))


class RTDETRDecoder(nn.Module):
    """The decoder layers (`layers.{i}`); heads are passed in so their names stay the official ones."""

    def __init__(self, layer: RTDETRDecoderLayer, num_layers: int, eval_idx: int = -1):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.eval_idx = eval_idx if eval_idx >= 0 else num_layers + eval_idx

    def forward(self, target: Tensor, ref_unact: Tensor, memory: Tensor, shapes: Shapes, bbox_head: nn.ModuleList,
                score_head: nn.ModuleList, query_pos_head: nn.Module, attn_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None) -> Tuple[List[Tensor], List[Tensor]]:
        """-> (boxes per returned layer [B, Q, 4] sigmoid cxcywh, logits per returned layer [B, Q, C]).

        Training returns every layer; eval stops at `eval_idx` and returns that layer only.
        Training boxes of layer i > 0 are refined from the previous layer's undetached box
        (look forward twice); the next layer's reference is always detached.
        """
        boxes, logits = [], []
        ref_detach = ref_unact.sigmoid()
        ref = ref_detach
        out = target
        for i, layer in enumerate(self.layers):
            query_pos = query_pos_head(ref_detach)
            out = layer(out, ref_detach.unsqueeze(2), memory, shapes, attn_mask, memory_mask, query_pos)
            delta = bbox_head[i](out)
            box = torch.sigmoid(delta + inverse_sigmoid(ref_detach))
            if self.training:
                logits.append(score_head[i](out))
                boxes.append(box if i == 0 else torch.sigmoid(delta + inverse_sigmoid(ref)))
            elif i == self.eval_idx:
                logits.append(score_head[i](out))
                boxes.append(box)
                break
            ref = box
            ref_detach = box.detach()
        return boxes, logits


def generate_anchors(shapes: Shapes, grid_size: float = 0.05, eps: float = 0.01, dtype=torch.float32,
                     device=None) -> Tuple[Tensor, Tensor]:
    """Anchor boxes of every encoder token -> (logit anchors [1, S, 4] (inf where invalid), valid [1, S, 1] bool).

    Token (x, y) of level l: centre ((x + 0.5)/W, (y + 0.5)/H), size 0.05·2^l; valid when all four
    values lie in (eps, 1 - eps).
    """
    anchors = []
    for lvl, (h, w) in enumerate(shapes):
        gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        xy = (torch.stack([gx, gy], -1).unsqueeze(0) + 0.5) / torch.tensor([w, h], dtype=dtype)
        wh = torch.ones_like(xy) * grid_size * (2.0 ** lvl)
        anchors.append(torch.cat([xy, wh], -1).reshape(-1, h * w, 4))
    anchors = torch.cat(anchors, 1).to(device)
    valid = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    anchors = torch.log(anchors / (1 - anchors))
    return torch.where(valid, anchors, torch.inf), valid


def select_topk(memory: Tensor, logits: Tensor, coords_unact: Tensor, topk: int, method: str = "default",
                num_classes: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pick `topk` encoder tokens -> (memory [B, K, D], logits [B, K, C], coords [B, K, 4], indices [B, K]).

    default: by the best class score; one2many: by (token, class) pairs; agnostic: by the one score.
    """
    tokens = logits.shape[1] * (logits.shape[-1] if method == "one2many" else 1)
    if isinstance(tokens, int) and tokens < topk:  # small images: torch's own words would be "index out of range"
        raise ValueError(f"the image gives {logits.shape[1]} encoder positions, fewer than the {topk} queries the decoder "
                         "selects from them: train and run on larger images (--imgsz) or with fewer queries "
                         f"(--set model.num_queries={tokens} or less)")
    if method == "default":
        index = torch.topk(logits.max(-1).values, topk, dim=-1).indices
    elif method == "one2many":
        index = torch.topk(logits.flatten(1), topk, dim=-1).indices // (num_classes or logits.shape[-1])
    elif method == "agnostic":
        index = torch.topk(logits.squeeze(-1), topk, dim=-1).indices
    else:
        raise ValueError(f"unknown query_select_method '{method}'. Valid: {', '.join(QUERY_SELECT_METHODS)}")

    def take(x: Tensor) -> Tensor:
        return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

    return take(memory), take(logits), take(coords_unact), index


class InputProjection(nn.ModuleList):
    """1x1 conv + BN per feature level (`{l}.conv/norm`), then stride-2 3x3 conv + BN for extra levels."""

    def __init__(self, feat_channels: Sequence[int], hidden_dim: int, num_levels: int):
        layers = [nn.Sequential(OrderedDict([("conv", nn.Conv2d(c, hidden_dim, 1, bias=False)),
                                             ("norm", nn.BatchNorm2d(hidden_dim))])) for c in feat_channels]
        c = feat_channels[-1]
        for _ in range(num_levels - len(feat_channels)):
            layers.append(nn.Sequential(OrderedDict([("conv", nn.Conv2d(c, hidden_dim, 3, 2, padding=1, bias=False)),
                                                     ("norm", nn.BatchNorm2d(hidden_dim))])))
            c = hidden_dim
        super().__init__(layers)
        for m in self:
            nn.init.xavier_uniform_(m.conv.weight)

    def flatten(self, feats: Sequence[Tensor]) -> Tuple[Tensor, Shapes]:
        """-> (tokens [B, S, D] level after level, [(H, W)] per level)."""
        proj = [self[i](f) for i, f in enumerate(feats)]
        for i in range(len(feats), len(self)):
            proj.append(self[i](feats[-1] if i == len(feats) else proj[-1]))
        shapes = [(int(p.shape[2]), int(p.shape[3])) for p in proj]
        return torch.cat([p.flatten(2).permute(0, 2, 1) for p in proj], 1), shapes


__all__ = ["MSDeformableAttentionV2", "RTDETRDecoderLayer", "RTDETRDecoder", "generate_anchors", "select_topk",
           "InputProjection", "focal_prior_bias", "CROSS_ATTN_METHODS", "QUERY_SELECT_METHODS"]
