"""RF-DETR's multi-scale projector (LW-DETR's): ViT feature maps -> one C2f-fused map per output scale.

Per output scale (P3 = x2, P4 = x1, P5 = x0.5 of the ViT stride) every ViT map is resampled
(`stages_sampling.{scale}.{map}`: transposed conv for x2, nothing for x1, a stride-2 ConvX for x0.5),
the maps are concatenated and fused by a C2f block and a channel LayerNorm (`stages.{scale}.{0,1}`).
Names equal the official module's, so its checkpoints load key for key.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SCALE_FACTORS = {"P3": 2.0, "P4": 1.0, "P5": 0.5}


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of an NCHW map (per pixel), eps 1e-6."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvX(nn.Module):
    """Conv (no bias) -> channel LayerNorm (or BatchNorm) -> activation."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, act: str = "relu", layer_norm: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)
        self.bn = ChannelLayerNorm(cout) if layer_norm else nn.BatchNorm2d(cout)
        self.act = nn.SiLU() if act == "silu" else nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 ConvX; RF-DETR builds them without the residual (C2f's shortcut=False)."""

    def __init__(self, channels: int, layer_norm: bool):
        super().__init__()
        self.cv1 = ConvX(channels, channels, 3, act="silu", layer_norm=layer_norm)
        self.cv2 = ConvX(channels, channels, 3, act="silu", layer_norm=layer_norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.cv2(self.cv1(x))


class C2f(nn.Module):
    """cv1 (1x1) -> split in two halves; n bottlenecks chained on the last chunk, every output kept; cv2 (1x1) fuses all."""

    def __init__(self, cin: int, cout: int, n: int = 3, layer_norm: bool = True):
        super().__init__()
        self.c = cout // 2
        self.cv1 = ConvX(cin, 2 * self.c, 1, act="silu", layer_norm=layer_norm)
        self.cv2 = ConvX((2 + n) * self.c, cout, 1, act="silu", layer_norm=layer_norm)
        self.m = nn.ModuleList(Bottleneck(self.c, layer_norm) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


def _sampler(scale: float, channels: int, layer_norm: bool) -> nn.Sequential:
    if scale == 2.0:
        return nn.Sequential(nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2))
    if scale == 1.0:
        return nn.Sequential()
    if scale == 0.5:
        return nn.Sequential(ConvX(channels, channels, 3, 2, act="relu", layer_norm=layer_norm))
    raise ValueError(f"RF-DETR projector scale factor {scale} is not one of 2 (P3), 1 (P4), 0.5 (P5)")


class MultiScaleProjector(nn.Module):
    def __init__(self, in_channels: Sequence[int], out_channels: int, scales: Sequence[str], num_blocks: int = 3,
                 layer_norm: bool = True):
        super().__init__()
        unknown = [s for s in scales if s not in SCALE_FACTORS]
        if unknown or list(scales) != sorted(scales) or not scales:
            raise ValueError(f"RF-DETR projector_scale must be a non-empty ascending subset of P3, P4, P5, got {list(scales)}")
        self.stages_sampling = nn.ModuleList()
        self.stages = nn.ModuleList()
        for name in scales:
            f = SCALE_FACTORS[name]
            self.stages_sampling.append(nn.ModuleList(_sampler(f, c, layer_norm) for c in in_channels))
            fused = sum(c // 2 if f == 2.0 else c for c in in_channels)
            self.stages.append(nn.Sequential(C2f(fused, out_channels, num_blocks, layer_norm), ChannelLayerNorm(out_channels)))

    def forward(self, feats: List[Tensor]) -> List[Tensor]:
        out = []
        for sampling, stage in zip(self.stages_sampling, self.stages):
            parts = [s(f) for s, f in zip(sampling, feats)]
            out.append(stage(torch.cat(parts, 1) if len(parts) > 1 else parts[0]))
        return out


__all__ = ["MultiScaleProjector", "ChannelLayerNorm", "C2f", "ConvX", "SCALE_FACTORS"]
