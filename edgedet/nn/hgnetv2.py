"""HGNetv2 (PP-HGNetV2 B0-B6), the D-FINE / DEIM backbone, with the official parameter names.

Module and parameter names follow Peterande/D-FINE `src/nn/backbone/hgnetv2.py` (`stem.stem1.conv`,
`stages.2.blocks.0.layers.0.conv1.bn`, `...lab.scale`), so D-FINE/DEIM checkpoints and the
PaddleDetection-converted ImageNet weights (`PPHGNetV2_B*_stage1.pth`) load with their own keys.
`use_lab` adds a LearnableAffineBlock (scalar scale and bias) after every activation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.nn.frozen_bn import FrozenBatchNorm2d


@dataclass(frozen=True)
class StageSpec:
    in_ch: int
    mid_ch: int
    out_ch: int
    num_blocks: int
    downsample: bool
    light_block: bool
    kernel_size: int
    layers_per_block: int


def _stages(*rows: Tuple) -> Tuple[StageSpec, ...]:
    return tuple(StageSpec(*r) for r in rows)


# name -> (stem channels (in, mid, out), four stages); the published architecture table.
HGNETV2_ARCHS: Dict[str, Tuple[Tuple[int, int, int], Tuple[StageSpec, ...]]] = {
    "B0": ((3, 16, 16), _stages((16, 16, 64, 1, False, False, 3, 3), (64, 32, 256, 1, True, False, 3, 3),
                                (256, 64, 512, 2, True, True, 5, 3), (512, 128, 1024, 1, True, True, 5, 3))),
    "B1": ((3, 24, 32), _stages((32, 32, 64, 1, False, False, 3, 3), (64, 48, 256, 1, True, False, 3, 3),
                                (256, 96, 512, 2, True, True, 5, 3), (512, 192, 1024, 1, True, True, 5, 3))),
    "B2": ((3, 24, 32), _stages((32, 32, 96, 1, False, False, 3, 4), (96, 64, 384, 1, True, False, 3, 4),
                                (384, 128, 768, 3, True, True, 5, 4), (768, 256, 1536, 1, True, True, 5, 4))),
    "B3": ((3, 24, 32), _stages((32, 32, 128, 1, False, False, 3, 5), (128, 64, 512, 1, True, False, 3, 5),
                                (512, 128, 1024, 3, True, True, 5, 5), (1024, 256, 2048, 1, True, True, 5, 5))),
    "B4": ((3, 32, 48), _stages((48, 48, 128, 1, False, False, 3, 6), (128, 96, 512, 1, True, False, 3, 6),
                                (512, 192, 1024, 3, True, True, 5, 6), (1024, 384, 2048, 1, True, True, 5, 6))),
    "B5": ((3, 32, 64), _stages((64, 64, 128, 1, False, False, 3, 6), (128, 128, 512, 2, True, False, 3, 6),
                                (512, 256, 1024, 5, True, True, 5, 6), (1024, 512, 2048, 2, True, True, 5, 6))),
    "B6": ((3, 48, 96), _stages((96, 96, 192, 2, False, False, 3, 6), (192, 192, 512, 3, True, False, 3, 6),
                                (512, 384, 1024, 6, True, True, 5, 6), (1024, 768, 2048, 3, True, True, 5, 6))),
}
HGNETV2_STRIDES = (4, 8, 16, 32)


def hgnetv2_out_channels(name: str, return_idx: Sequence[int]) -> List[int]:
    stages = HGNETV2_ARCHS[name][1]
    return [stages[i].out_ch for i in return_idx]


class LearnableAffineBlock(nn.Module):
    """y = scale * x + bias with two learnable scalars (PP-HGNetV2's LAB)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x + self.bias


class ConvBNAct(nn.Module):
    """conv (no bias) -> bn -> ReLU (optional) -> LAB (when use_lab and activated)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True, use_lab: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU() if act else nn.Identity()
        self.lab = LearnableAffineBlock() if act and use_lab else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.lab(self.act(self.bn(self.conv(x))))


class LightConvBNAct(nn.Module):
    """1x1 conv (no activation) then a depthwise k x k conv with activation."""

    def __init__(self, cin: int, cout: int, k: int, use_lab: bool):
        super().__init__()
        self.conv1 = ConvBNAct(cin, cout, 1, act=False, use_lab=use_lab)
        self.conv2 = ConvBNAct(cout, cout, k, groups=cout, act=True, use_lab=use_lab)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


class StemBlock(nn.Module):
    """Stride-4 stem: conv s2, then (max-pool || two 2x2 convs), concat, conv s2, 1x1 conv.

    The 2x2 branches pad right/bottom by one pixel so the resolution is kept.
    """

    def __init__(self, cin: int, mid: int, cout: int, use_lab: bool):
        super().__init__()
        self.stem1 = ConvBNAct(cin, mid, 3, stride=2, use_lab=use_lab)
        self.stem2a = ConvBNAct(mid, mid // 2, 2, use_lab=use_lab)
        self.stem2b = ConvBNAct(mid // 2, mid, 2, use_lab=use_lab)
        self.stem3 = ConvBNAct(mid * 2, mid, 3, stride=2, use_lab=use_lab)
        self.stem4 = ConvBNAct(mid, cout, 1, use_lab=use_lab)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=1, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(self.stem1(x), (0, 1, 0, 1))
        branch = self.stem2b(F.pad(self.stem2a(x), (0, 1, 0, 1)))
        x = torch.cat([self.pool(x), branch], dim=1)
        return self.stem4(self.stem3(x))


class HGBlock(nn.Module):
    """`layers_per_block` chained convs, all outputs (and the input) concatenated, then a
    squeeze (1x1 to out/2) and excitation (1x1 to out) aggregation; residual after block 0."""

    def __init__(self, cin: int, mid: int, cout: int, num_layers: int, k: int, residual: bool, light: bool, use_lab: bool):
        super().__init__()
        self.residual = residual
        self.layers = nn.ModuleList(
            LightConvBNAct(cin if i == 0 else mid, mid, k, use_lab) if light
            else ConvBNAct(cin if i == 0 else mid, mid, k, use_lab=use_lab)
            for i in range(num_layers)
        )
        total = cin + num_layers * mid
        self.aggregation = nn.Sequential(
            ConvBNAct(total, cout // 2, 1, use_lab=use_lab), ConvBNAct(cout // 2, cout, 1, use_lab=use_lab)
        )

    def forward(self, x: Tensor) -> Tensor:
        outs = [x]
        y = x
        for layer in self.layers:
            y = layer(y)
            outs.append(y)
        y = self.aggregation(torch.cat(outs, dim=1))
        return y + x if self.residual else y


class HGStage(nn.Module):
    def __init__(self, spec: StageSpec, use_lab: bool):
        super().__init__()
        self.downsample = (
            ConvBNAct(spec.in_ch, spec.in_ch, 3, stride=2, groups=spec.in_ch, act=False, use_lab=use_lab)
            if spec.downsample else nn.Identity()
        )
        self.blocks = nn.Sequential(*[
            HGBlock(spec.in_ch if i == 0 else spec.out_ch, spec.mid_ch, spec.out_ch, spec.layers_per_block,
                    spec.kernel_size, residual=i > 0, light=spec.light_block, use_lab=use_lab)
            for i in range(spec.num_blocks)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


def _freeze_bn(module: nn.Module) -> None:
    """Replace every BatchNorm2d below `module` by a FrozenBatchNorm2d (official freeze_norm)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features, eps=child.eps))
        else:
            _freeze_bn(child)


class HGNetv2(nn.Module):
    """forward(x) -> feature maps of the stages in `return_idx` (strides 4, 8, 16, 32 by index).

    freeze_at >= 0 freezes the stem (and stages 0..freeze_at unless freeze_stem_only);
    freeze_norm turns every BatchNorm2d into FrozenBatchNorm2d, as the official L/X configs do.
    """

    def __init__(self, name: str = "B0", use_lab: bool = False, return_idx: Sequence[int] = (1, 2, 3),
                 freeze_at: int = -1, freeze_stem_only: bool = True, freeze_norm: bool = False):
        super().__init__()
        if name not in HGNETV2_ARCHS:
            raise ValueError(f"unknown HGNetv2 variant '{name}'; choose one of {', '.join(HGNETV2_ARCHS)}")
        if not return_idx or any(i not in range(4) for i in return_idx):
            raise ValueError(f"HGNetv2 return_idx must pick stages among 0..3, got {list(return_idx)}")
        stem, stages = HGNETV2_ARCHS[name]
        self.name, self.return_idx = name, list(return_idx)
        self.out_channels = [stages[i].out_ch for i in self.return_idx]
        self.strides = [HGNETV2_STRIDES[i] for i in self.return_idx]
        self.stem = StemBlock(*stem, use_lab=use_lab)
        self.stages = nn.ModuleList(HGStage(s, use_lab) for s in stages)
        if freeze_at >= 0:
            frozen: List[nn.Module] = [self.stem]
            if not freeze_stem_only:
                frozen += list(self.stages[: freeze_at + 1])
            for m in frozen:
                for p in m.parameters():
                    p.requires_grad_(False)
        if freeze_norm:
            _freeze_bn(self)

    def forward(self, x: Tensor) -> List[Tensor]:
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.return_idx:
                outs.append(x)
        return outs
