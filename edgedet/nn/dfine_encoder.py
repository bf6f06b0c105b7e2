"""D-FINE's hybrid encoder: RT-DETR's (`edgedet.nn.hybrid_encoder`: one transformer layer on the
coarsest level(s), then top-down / bottom-up fusion) with D-FINE's fusion blocks: RepNCSPELAN4, and
SCDown (1x1 then depthwise stride-2) downsampling.

Module and parameter names follow Peterande/D-FINE `src/zoo/dfine/hybrid_encoder.py`
(`input_proj.0.conv`, `encoder.0.layers.0.self_attn`, `fpn_blocks.0.cv2.0.bottlenecks.0.conv1.conv`,
`downsample_convs.0.0.cv1`, ...). `deploy()` fuses, like the official `convert_to_deploy`:
ConvNorm -> `conv_bn_fused`, RepVGG-style VGGBlock -> one 3x3 `conv`, deleting the fused
sub-modules (the state_dict changes accordingly).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.nn.hybrid_encoder import HybridEncoder, fuse_conv_bn
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


class DFineHybridEncoder(HybridEncoder):
    """RT-DETR's hybrid encoder (same AIFI, same top-down / bottom-up order) with D-FINE's fusion blocks:
    RepNCSPELAN4 in place of CSPRepLayer, SCDown for the stride-2 downsampling.
    forward(feats: list of [B, C_l, H_l, W_l], fine to coarse) -> list of [B, hidden, H_l, W_l]."""

    xavier_input_proj = False

    def fusion_blocks(self, n: int, hidden_dim: int, expansion: float, depth_mult: float, act: str):
        branch, depth = round(expansion * hidden_dim // 2), round(3 * depth_mult)
        return (nn.ModuleList(ConvNorm(hidden_dim, hidden_dim, 1) for _ in range(n)),
                nn.ModuleList(RepNCSPELAN4(hidden_dim * 2, hidden_dim, hidden_dim * 2, branch, depth, act=act) for _ in range(n)),
                nn.ModuleList(nn.Sequential(SCDown(hidden_dim, hidden_dim, 3, 2)) for _ in range(n)),
                nn.ModuleList(RepNCSPELAN4(hidden_dim * 2, hidden_dim, hidden_dim * 2, branch, depth, act=act) for _ in range(n)))
