"""PResNet: the ResNet "vd" backbones of RT-DETR / RT-DETRv2 (PaddleDetection's layout).

Parameter names equal lyuwenyu/RT-DETR's `PResNet` so its checkpoints load unchanged:
`conv1.conv1_{1,2,3}.{conv,norm}` (the 3-conv "vd" stem 3->32->32->64, or one 7x7 conv for
variant "b"), `res_layers.{i}.blocks.{j}.branch2{a,b,c}.{conv,norm}` and the shortcut
`short` (`short.pool` + `short.conv` in variant "d": average pooling before the 1x1 conv on
stride-2 downsampling, which keeps the information a strided 1x1 conv throws away).
Depths 18/34 use BasicBlock, 50/101 BottleNeck (stride on the 3x3 conv, variants b-d).
`freeze_norm` swaps every BatchNorm2d for `FrozenBatchNorm2d` (same keys, no
`num_batches_tracked`); `freeze_at` freezes the stem and the first `freeze_at` stages.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.nn.frozen_bn import FrozenBatchNorm2d

PRESNET_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
PRESNET_VARIANTS = ("a", "b", "c", "d")
ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU, "hardsigmoid": nn.Hardsigmoid}


def activation(name) -> nn.Module:
    """Activation module by (official config) name; None -> Identity."""
    if name is None:
        return nn.Identity()
    key = name.lower().replace("swish", "silu")
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'. Valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[key]()


class ConvNormLayer(nn.Module):
    """conv (same padding unless given) -> BatchNorm2d -> activation; keys `conv`, `norm`."""

    def __init__(self, ch_in: int, ch_out: int, kernel_size: int, stride: int, padding=None, bias: bool = False,
                 act=None):
        super().__init__()
        pad = (kernel_size - 1) // 2 if padding is None else padding
        self.conv = nn.Conv2d(ch_in, ch_out, kernel_size, stride, padding=pad, bias=bool(bias))
        self.norm = nn.BatchNorm2d(ch_out)
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


def _shortcut(ch_in: int, ch_out: int, stride: int, variant: str) -> nn.Module:
    if variant == "d" and stride == 2:
        return nn.Sequential(OrderedDict([("pool", nn.AvgPool2d(2, 2, 0, ceil_mode=True)),
                                          ("conv", ConvNormLayer(ch_in, ch_out, 1, 1))]))
    return ConvNormLayer(ch_in, ch_out, 1, stride)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, ch_in: int, ch_out: int, stride: int, shortcut: bool, act: str = "relu", variant: str = "d"):
        super().__init__()
        self.shortcut = shortcut
        if not shortcut:
            self.short = _shortcut(ch_in, ch_out, stride, variant)
        self.branch2a = ConvNormLayer(ch_in, ch_out, 3, stride, act=act)
        self.branch2b = ConvNormLayer(ch_out, ch_out, 3, 1)
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch2b(self.branch2a(x))
        return self.act(out + (x if self.shortcut else self.short(x)))


class BottleNeck(nn.Module):
    expansion = 4

    def __init__(self, ch_in: int, ch_out: int, stride: int, shortcut: bool, act: str = "relu", variant: str = "d"):
        super().__init__()
        stride1, stride2 = (stride, 1) if variant == "a" else (1, stride)
        self.branch2a = ConvNormLayer(ch_in, ch_out, 1, stride1, act=act)
        self.branch2b = ConvNormLayer(ch_out, ch_out, 3, stride2, act=act)
        self.branch2c = ConvNormLayer(ch_out, ch_out * self.expansion, 1, 1)
        self.shortcut = shortcut
        if not shortcut:
            self.short = _shortcut(ch_in, ch_out * self.expansion, stride, variant)
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch2c(self.branch2b(self.branch2a(x)))
        return self.act(out + (x if self.shortcut else self.short(x)))


class Blocks(nn.Module):
    """One stage: `count` blocks; the first one changes width (and stride, except stage 2)."""

    def __init__(self, block, ch_in: int, ch_out: int, count: int, stage_num: int, act: str, variant: str):
        super().__init__()
        self.blocks = nn.ModuleList()
        for i in range(count):
            stride = 2 if i == 0 and stage_num != 2 else 1
            self.blocks.append(block(ch_in, ch_out, stride, shortcut=i > 0, act=act, variant=variant))
            ch_in = ch_out * block.expansion

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d below `module` (and itself) by FrozenBatchNorm2d with its values."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, name).copy_(getattr(module, name).detach())
        return frozen
    for name, child in module.named_children():
        new = freeze_batch_norm(child)
        if new is not child:
            setattr(module, name, new)
    return module


class PResNet(nn.Module):
    """forward(images [B, 3, H, W]) -> the stages in `return_idx` (0..3 = strides 4/8/16/32)."""

    def __init__(self, depth: int = 50, variant: str = "d", num_stages: int = 4, return_idx: Sequence[int] = (1, 2, 3),
                 act: str = "relu", freeze_at: int = -1, freeze_norm: bool = True):
        super().__init__()
        if depth not in PRESNET_DEPTHS:
            raise ValueError(f"PResNet depth {depth} is not supported. Valid: {', '.join(map(str, PRESNET_DEPTHS))}")
        if variant not in PRESNET_VARIANTS:
            raise ValueError(f"PResNet variant '{variant}' is not supported. Valid: {', '.join(PRESNET_VARIANTS)}")
        if not return_idx or any(not 0 <= i < num_stages for i in return_idx):
            raise ValueError(f"PResNet return_idx {list(return_idx)} must be stage indices in 0..{num_stages - 1}")
        ch_in = 64
        if variant in ("c", "d"):
            stem = [(3, ch_in // 2, 3, 2, "conv1_1"), (ch_in // 2, ch_in // 2, 3, 1, "conv1_2"),
                    (ch_in // 2, ch_in, 3, 1, "conv1_3")]
        else:
            stem = [(3, ch_in, 7, 2, "conv1_1")]
        self.conv1 = nn.Sequential(OrderedDict(
            (name, ConvNormLayer(ci, co, k, s, act=act)) for ci, co, k, s, name in stem))
        widths = (64, 128, 256, 512)
        block = BottleNeck if depth >= 50 else BasicBlock
        out_channels = [block.expansion * w for w in widths]
        self.res_layers = nn.ModuleList()
        for i in range(num_stages):
            self.res_layers.append(Blocks(block, ch_in, widths[i], PRESNET_DEPTHS[depth][i], i + 2, act, variant))
            ch_in = out_channels[i]
        self.return_idx = list(return_idx)
        self.out_channels: List[int] = [out_channels[i] for i in self.return_idx]
        self.out_strides: List[int] = [(4, 8, 16, 32)[i] for i in self.return_idx]
        if freeze_at >= 0:
            for m in [self.conv1] + [self.res_layers[i] for i in range(min(freeze_at, num_stages))]:
                for p in m.parameters():
                    p.requires_grad_(False)
        if freeze_norm:
            freeze_batch_norm(self)

    def forward(self, x: Tensor) -> List[Tensor]:
        x = F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)
        outs = []
        for idx, stage in enumerate(self.res_layers):
            x = stage(x)
            if idx in self.return_idx:
                outs.append(x)
        return outs


__all__ = ["PResNet", "PRESNET_DEPTHS", "ConvNormLayer", "activation", "freeze_batch_norm"]
