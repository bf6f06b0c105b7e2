"""D-FINE's hybrid encoder: one transformer layer on the coarsest level(s) (RT-DETR's AIFI, shared
with `edgedet.nn.hybrid_encoder`), then a top-down / bottom-up fusion with RepNCSPELAN4 blocks and
SCDown (1x1 then depthwise stride-2) downsampling.

Module and parameter names follow Peterande/D-FINE `src/zoo/dfine/hybrid_encoder.py`
(`input_proj.0.conv`, `encoder.0.layers.0.self_attn`, `fpn_blocks.0.cv2.0.bottlenecks.0.conv1.conv`,
`downsample_convs.0.0.cv1`, ...). `deploy()` fuses, like the official `convert_to_deploy`:
ConvNorm -> `conv_bn_fused`, RepVGG-style VGGBlock -> one 3x3 `conv`, deleting the fused
sub-modules (the state_dict changes accordingly).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.nn.hybrid_encoder import AIFIEncoder, AIFILayer, fuse_conv_bn, sincos_position_embedding_2d
from edgedet.nn.presnet import activation


def make_activation(name: Optional[str]) -> nn.Module:
    return activation(name)


class ConvNorm(nn.Module):
    """conv -> BatchNorm -> activation; `deploy()` folds the BN into `conv_bn_fused`."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                 padding: Optional[int] = None, act: Optional[str] = None):
        super().__init__()
        pad = (k - 1) // 2 if padding is None else padding
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=pad, groups=groups, bias=False)
        self.norm = nn.BatchNorm2d(cout)
        self.act = make_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "conv_bn_fused"):
            return self.act(self.conv_bn_fused(x))
        return self.act(self.norm(self.conv(x)))

    def deploy(self) -> None:
        if hasattr(self, "conv_bn_fused"):
            return
        c = self.conv
        fused = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, padding=c.padding, groups=c.groups, bias=True)
        w, b = fuse_conv_bn(c, self.norm)
        fused.weight.data, fused.bias.data = w.detach(), b.detach()
        self.conv_bn_fused = fused
        del self.conv, self.norm


class VGGBlock(nn.Module):
    """RepVGG block: act(BN(3x3 conv) + BN(1x1 conv)); `deploy()` makes it one 3x3 `conv`."""

    def __init__(self, cin: int, cout: int, act: str = "relu"):
        super().__init__()
        self.conv1 = ConvNorm(cin, cout, 3, padding=1)
        self.conv2 = ConvNorm(cin, cout, 1, padding=0)
        self.act = make_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "conv"):
            return self.act(self.conv(x))
        return self.act(self.conv1(x) + self.conv2(x))

    def deploy(self) -> None:
        if hasattr(self, "conv"):
            return
        w3, b3 = fuse_conv_bn(self.conv1.conv, self.conv1.norm)
        w1, b1 = fuse_conv_bn(self.conv2.conv, self.conv2.norm)
        conv = nn.Conv2d(self.conv1.conv.in_channels, self.conv1.conv.out_channels, 3, 1, padding=1)
        conv.weight.data = (w3 + F.pad(w1, [1, 1, 1, 1])).detach()
        conv.bias.data = (b3 + b1).detach()
        self.conv = conv
        del self.conv1, self.conv2


class CSPLayer(nn.Module):
    """conv3(bottlenecks(conv1(x)) + conv2(x)) with VGGBlock bottlenecks."""

    def __init__(self, cin: int, cout: int, num_blocks: int, expansion: float = 1.0, act: str = "silu"):
        super().__init__()
        hidden = int(cout * expansion)
        self.conv1 = ConvNorm(cin, hidden, 1, act=act)
        self.conv2 = ConvNorm(cin, hidden, 1, act=act)
        self.bottlenecks = nn.Sequential(*[VGGBlock(hidden, hidden, act=act) for _ in range(num_blocks)])
        self.conv3 = ConvNorm(hidden, cout, 1, act=act) if hidden != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class RepNCSPELAN4(nn.Module):
    """CSP-ELAN (from YOLOv9): split cv1(x) in two halves, chain two CSP branches on the
    second half, concatenate all four and project with cv4. c3 = split width x 2, c4 = branch width."""

    def __init__(self, c1: int, c2: int, c3: int, c4: int, n: int = 3, act: str = "silu"):
        super().__init__()
        self.c = c3 // 2
        self.cv1 = ConvNorm(c1, c3, 1, act=act)
        self.cv2 = nn.Sequential(CSPLayer(c3 // 2, c4, n, 1.0, act=act), ConvNorm(c4, c4, 3, act=act))
        self.cv3 = nn.Sequential(CSPLayer(c4, c4, n, 1.0, act=act), ConvNorm(c4, c4, 3, act=act))
        self.cv4 = ConvNorm(c3 + 2 * c4, c2, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.append(self.cv2(y[-1]))
        y.append(self.cv3(y[-1]))
        return self.cv4(torch.cat(y, 1))


class SCDown(nn.Module):
    """Spatial-channel decoupled downsampling: 1x1 conv, then a depthwise k x k stride-s conv."""

    def __init__(self, c1: int, c2: int, k: int, s: int):
        super().__init__()
        self.cv1 = ConvNorm(c1, c2, 1)
        self.cv2 = ConvNorm(c2, c2, k, s, groups=c2)

    def forward(self, x: Tensor) -> Tensor:
        return self.cv2(self.cv1(x))


class DFineHybridEncoder(nn.Module):
    """forward(feats: list of [B, C_l, H_l, W_l], fine to coarse) -> list of [B, hidden, H_l, W_l]."""

    def __init__(self, in_channels: Sequence[int], feat_strides: Sequence[int], hidden_dim: int = 256, nhead: int = 8,
                 dim_feedforward: int = 1024, dropout: float = 0.0, enc_act: str = "gelu",
                 use_encoder_idx: Sequence[int] = (2,), num_encoder_layers: int = 1, pe_temperature: float = 10000.0,
                 expansion: float = 1.0, depth_mult: float = 1.0, act: str = "silu"):
        super().__init__()
        self.in_channels, self.feat_strides = list(in_channels), list(feat_strides)
        self.hidden_dim, self.use_encoder_idx = hidden_dim, list(use_encoder_idx)
        self.num_encoder_layers, self.pe_temperature = num_encoder_layers, pe_temperature
        self.input_proj = nn.ModuleList(
            nn.Sequential(OrderedDict([("conv", nn.Conv2d(c, hidden_dim, 1, bias=False)), ("norm", nn.BatchNorm2d(hidden_dim))]))
            for c in in_channels
        )
        layer = AIFILayer(hidden_dim, nhead, dim_feedforward, dropout, enc_act)
        self.encoder = nn.ModuleList(AIFIEncoder(layer, num_encoder_layers) for _ in self.use_encoder_idx)
        n_levels = len(in_channels)
        branch, depth = round(expansion * hidden_dim // 2), round(3 * depth_mult)
        self.lateral_convs = nn.ModuleList(ConvNorm(hidden_dim, hidden_dim, 1) for _ in range(n_levels - 1))
        self.fpn_blocks = nn.ModuleList(
            RepNCSPELAN4(hidden_dim * 2, hidden_dim, hidden_dim * 2, branch, depth, act=act) for _ in range(n_levels - 1)
        )
        self.downsample_convs = nn.ModuleList(nn.Sequential(SCDown(hidden_dim, hidden_dim, 3, 2)) for _ in range(n_levels - 1))
        self.pan_blocks = nn.ModuleList(
            RepNCSPELAN4(hidden_dim * 2, hidden_dim, hidden_dim * 2, branch, depth, act=act) for _ in range(n_levels - 1)
        )

    def forward(self, feats: List[Tensor]) -> List[Tensor]:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"the encoder expects {len(self.in_channels)} feature maps, got {len(feats)}")
        proj = [p(f) for p, f in zip(self.input_proj, feats)]
        if self.num_encoder_layers > 0:
            for enc, idx in zip(self.encoder, self.use_encoder_idx):
                b, c, h, w = proj[idx].shape
                src = proj[idx].flatten(2).permute(0, 2, 1)
                pos = sincos_position_embedding_2d(w, h, self.hidden_dim, self.pe_temperature).to(src)
                proj[idx] = enc(src, pos).permute(0, 2, 1).reshape(b, c, h, w).contiguous()
        n = len(self.in_channels)
        inner = [proj[-1]]  # top-down
        for i, idx in enumerate(range(n - 1, 0, -1)):
            high = self.lateral_convs[i](inner[0])
            inner[0] = high
            up = F.interpolate(high, scale_factor=2.0, mode="nearest")
            inner.insert(0, self.fpn_blocks[i](torch.cat([up, proj[idx - 1]], dim=1)))
        outs = [inner[0]]  # bottom-up
        for i in range(n - 1):
            down = self.downsample_convs[i](outs[-1])
            outs.append(self.pan_blocks[i](torch.cat([down, inner[i + 1]], dim=1)))
        return outs
