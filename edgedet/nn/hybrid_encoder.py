"""The hybrid encoder of RT-DETR (Zhao et al. 2024): AIFI + CCFM.

- AIFI (attention-based intra-scale feature interaction): a plain post-norm transformer
  encoder layer on the coarsest level(s) only (`use_encoder_idx`), with the 2-D sin-cos
  position embedding built exactly as the official `build_2d_sincos_position_embedding`.
- CCFM (CNN-based cross-scale feature fusion): a top-down FPN then a bottom-up PAN, each merge
  a `CSPRepLayer` (CSP block of RepVGG blocks).

`RepVggBlock.convert_to_deploy()` fuses its 3x3 and 1x1 conv+BN branches into one 3x3 conv
(adds a `conv` submodule), as RT-DETR's `deploy()` does. Parameter names equal
lyuwenyu/RT-DETR's `HybridEncoder` (v2 layout: `input_proj.{i}.conv/norm`). The pieces are
shared with D-FINE.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.nn.presnet import ConvNormLayer, activation


def sincos_position_embedding_2d(w: int, h: int, embed_dim: int = 256, temperature: float = 10000.0) -> Tensor:
    """[1, w*h, embed_dim] = [sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω)], ω_i = 1/temperature^(i/(D/4)).

    As the official code: the grid is meshgrid(w, h, indexing='ij') flattened, so token k gets
    x = k // h and y = k % h even though tokens are flattened row-major (k = y·w + x). On
    square maps that is a transpose the trained weights expect; we keep it for exactness.
    """
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}")
    grid_w, grid_h = torch.meshgrid(torch.arange(int(w), dtype=torch.float32), torch.arange(int(h), dtype=torch.float32),
                                    indexing="ij")
    pos_dim = embed_dim // 4
    omega = 1.0 / temperature ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim)
    out_w = grid_w.flatten()[:, None] @ omega[None]
    out_h = grid_h.flatten()[:, None] @ omega[None]
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]


def fuse_conv_bn(conv: nn.Conv2d, norm: nn.Module):
    """(kernel, bias) of conv followed by BatchNorm2d (eval statistics)."""
    std = (norm.running_var + norm.eps).sqrt()
    scale = norm.weight / std
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale.reshape(-1, 1, 1, 1), bias


class RepVggBlock(nn.Module):
    """act(conv3x3+BN (x) + conv1x1+BN (x)); after `convert_to_deploy()` act(conv3x3 (x))."""

    def __init__(self, ch_in: int, ch_out: int, act: str = "relu"):
        super().__init__()
        self.ch_in, self.ch_out = ch_in, ch_out
        self.conv1 = ConvNormLayer(ch_in, ch_out, 3, 1, padding=1)
        self.conv2 = ConvNormLayer(ch_in, ch_out, 1, 1, padding=0)
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "conv"):
            return self.act(self.conv(x))
        return self.act(self.conv1(x) + self.conv2(x))

    @torch.no_grad()
    def convert_to_deploy(self) -> None:
        k3, b3 = fuse_conv_bn(self.conv1.conv, self.conv1.norm)
        k1, b1 = fuse_conv_bn(self.conv2.conv, self.conv2.norm)
        if not hasattr(self, "conv"):
            self.conv = nn.Conv2d(self.ch_in, self.ch_out, 3, 1, padding=1).to(k3)
        self.conv.weight.copy_(k3 + F.pad(k1, [1, 1, 1, 1]))
        self.conv.bias.copy_(b3 + b1)


class CSPRepLayer(nn.Module):
    """conv3(bottlenecks(conv1(x)) + conv2(x)); hidden width = out_channels · expansion."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 3, expansion: float = 1.0,
                 bias: bool = False, act: str = "silu"):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvNormLayer(in_channels, hidden, 1, 1, bias=bias, act=act)
        self.conv2 = ConvNormLayer(in_channels, hidden, 1, 1, bias=bias, act=act)
        self.bottlenecks = nn.Sequential(*[RepVggBlock(hidden, hidden, act=act) for _ in range(num_blocks)])
        self.conv3 = ConvNormLayer(hidden, out_channels, 1, 1, bias=bias, act=act) if hidden != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class AIFILayer(nn.Module):
    """Post-norm transformer encoder layer (self-attention with q = k = x + pos, then FFN)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 act: str = "relu", normalize_before: bool = False):
        super().__init__()
        self.normalize_before = normalize_before
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = activation(act)

    def forward(self, src: Tensor, pos: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None) -> Tensor:
        residual = src
        if self.normalize_before:
            src = self.norm1(src)
        q = k = src if pos is None else src + pos
        src, _ = self.self_attn(q, k, value=src, attn_mask=attn_mask, need_weights=False)
        src = residual + self.dropout1(src)
        if not self.normalize_before:
            src = self.norm1(src)
        residual = src
        if self.normalize_before:
            src = self.norm2(src)
        src = residual + self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(src)))))
        if not self.normalize_before:
            src = self.norm2(src)
        return src


class AIFIEncoder(nn.Module):
    """`num_layers` copies of one AIFILayer (keys `layers.{i}.*`)."""

    def __init__(self, layer: AIFILayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])

    def forward(self, src: Tensor, pos: Optional[Tensor] = None) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos)
        return src


class HybridEncoder(nn.Module):
    """forward(feats: per level [B, C_l, H_l, W_l], strides `feat_strides`) -> per level [B, D, H_l, W_l].

    AIFI (one transformer layer) on the `use_encoder_idx` levels, then top-down and bottom-up fusion
    (CCFM). The fusion blocks come from `fusion_blocks`: D-FINE's encoder (`edgedet.nn.dfine_encoder`)
    is this encoder with its own blocks."""

    xavier_input_proj = True  # RT-DETR's input projections start xavier-uniform; D-FINE keeps torch's default

    def __init__(self, in_channels: Sequence[int] = (512, 1024, 2048), feat_strides: Sequence[int] = (8, 16, 32),
                 hidden_dim: int = 256, nhead: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0,
                 enc_act: str = "gelu", use_encoder_idx: Sequence[int] = (2,), num_encoder_layers: int = 1,
                 pe_temperature: float = 10000.0, expansion: float = 1.0, depth_mult: float = 1.0, act: str = "silu"):
        super().__init__()
        name = type(self).__name__
        if len(in_channels) != len(feat_strides):
            raise ValueError(f"{name}: {len(in_channels)} in_channels but {len(feat_strides)} feat_strides")
        if any(not 0 <= i < len(in_channels) for i in use_encoder_idx):
            raise ValueError(f"{name} use_encoder_idx {list(use_encoder_idx)} must index the {len(in_channels)} levels")
        self.in_channels = list(in_channels)
        self.feat_strides = list(feat_strides)
        self.hidden_dim = hidden_dim
        self.use_encoder_idx = list(use_encoder_idx)
        self.num_encoder_layers = num_encoder_layers
        self.pe_temperature = pe_temperature
        self.out_channels = [hidden_dim] * len(in_channels)
        self.input_proj = nn.ModuleList(
            nn.Sequential(OrderedDict([("conv", nn.Conv2d(c, hidden_dim, 1, bias=False)), ("norm", nn.BatchNorm2d(hidden_dim))]))
            for c in in_channels)
        layer = AIFILayer(hidden_dim, nhead, dim_feedforward, dropout, enc_act)
        self.encoder = nn.ModuleList(AIFIEncoder(layer, num_encoder_layers) for _ in self.use_encoder_idx)
        self.lateral_convs, self.fpn_blocks, self.downsample_convs, self.pan_blocks = self.fusion_blocks(
            len(in_channels) - 1, hidden_dim, expansion, depth_mult, act)
        if self.xavier_input_proj:
            for proj in self.input_proj:
                nn.init.xavier_uniform_(proj.conv.weight)

    def fusion_blocks(self, n: int, hidden_dim: int, expansion: float, depth_mult: float, act: str):
        """-> (lateral convs, top-down blocks, downsampling convs, bottom-up blocks): n ModuleLists each,
        built in this order (parameter initialisation draws from the RNG in it)."""
        blocks = round(3 * depth_mult)
        return (nn.ModuleList(ConvNormLayer(hidden_dim, hidden_dim, 1, 1, act=act) for _ in range(n)),
                nn.ModuleList(CSPRepLayer(2 * hidden_dim, hidden_dim, blocks, expansion, act=act) for _ in range(n)),
                nn.ModuleList(ConvNormLayer(hidden_dim, hidden_dim, 3, 2, act=act) for _ in range(n)),
                nn.ModuleList(CSPRepLayer(2 * hidden_dim, hidden_dim, blocks, expansion, act=act) for _ in range(n)))

    def forward(self, feats: List[Tensor]) -> List[Tensor]:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"{type(self).__name__} expects {len(self.in_channels)} feature maps, got {len(feats)}")
        proj = [p(f) for p, f in zip(self.input_proj, feats)]
        if self.num_encoder_layers > 0:
            for enc, idx in zip(self.encoder, self.use_encoder_idx):
                b, d, h, w = proj[idx].shape
                tokens = proj[idx].flatten(2).permute(0, 2, 1)
                pos = sincos_position_embedding_2d(w, h, self.hidden_dim, self.pe_temperature).to(tokens)
                proj[idx] = enc(tokens, pos).permute(0, 2, 1).reshape(b, d, h, w).contiguous()
        n = len(self.in_channels)
        # Top-down: coarsest first; each step updates the coarse map through its lateral conv.
        inner = [proj[-1]]
        for idx in range(n - 1, 0, -1):
            high = self.lateral_convs[n - 1 - idx](inner[0])
            inner[0] = high
            up = F.interpolate(high, scale_factor=2.0, mode="nearest")
            inner.insert(0, self.fpn_blocks[n - 1 - idx](torch.cat([up, proj[idx - 1]], dim=1)))
        outs = [inner[0]]
        for idx in range(n - 1):
            down = self.downsample_convs[idx](outs[-1])
            outs.append(self.pan_blocks[idx](torch.cat([down, inner[idx + 1]], dim=1)))
        return outs


__all__ = ["HybridEncoder", "AIFILayer", "AIFIEncoder", "CSPRepLayer", "RepVggBlock", "fuse_conv_bn",
           "sincos_position_embedding_2d"]
