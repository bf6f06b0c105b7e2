"""DINOv2 ViT with windowed attention, as RF-DETR's backbone (plain PyTorch, no transformers/timm).

Parameter names equal the windowed DINOv2 RF-DETR ships (`embeddings.{cls_token, mask_token,
position_embeddings, patch_embeddings.projection}`, `encoder.layer.{i}.{norm1, attention.attention.
{query,key,value}, attention.output.dense, layer_scale1.lambda1, norm2, mlp.fc1, mlp.fc2,
layer_scale2.lambda1}`, `layernorm`), so its checkpoints load key for key.

Behaviour that decides the numbers:
- tokens: stride-p patch conv, row-major, the cls token first, the position table added. The table is
  used as is for a square input with exactly its number of patches, else its patch part is resized
  bicubically *with antialias* to (H/p, W/p) (the cls entry kept).
- windows (num_windows n > 1): the h x w token grid is cut into n x n windows, window index = row block
  * n + column block, each with its own copy of the cls token first -> [B * n^2, 1 + hw / n^2, C].
- pre-norm blocks with LayerScale; blocks not in `window_block_indexes` attend over all windows at
  once (their sequences concatenated, cls copies included), the others within each window.
- features: hidden states after the 1-indexed layers in `out_indices`, through the final LayerNorm,
  cls tokens dropped, windows stitched back -> [B, C, h, w] maps.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def window_block_indexes(out_indices: Sequence[int], num_layers: int) -> List[int]:
    """RF-DETR's rule: the blocks 0..out_indices[-1] that are not themselves in out_indices attend in windows."""
    return [i for i in range(out_indices[-1] + 1) if i not in set(out_indices) and i < num_layers]


class PatchEmbeddings(nn.Module):
    def __init__(self, dim: int, patch_size: int, channels: int = 3):
        super().__init__()
        self.projection = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(x).flatten(2).transpose(1, 2)


class WindowedEmbeddings(nn.Module):
    def __init__(self, dim: int, patch_size: int, table_side: int, num_windows: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # masked-image pre-training only; kept for the keys
        self.patch_embeddings = PatchEmbeddings(dim, patch_size)
        self.position_embeddings = nn.Parameter(torch.zeros(1, table_side * table_side + 1, dim))
        self.patch_size, self.table_side, self.num_windows = patch_size, table_side, num_windows
        nn.init.trunc_normal_(self.position_embeddings, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def _resized_table(self, h: int, w: int) -> Tensor:
        table = self.position_embeddings
        side, dim = self.table_side, table.shape[-1]
        patch = table[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        patch = F.interpolate(patch.float(), size=(h, w), mode="bicubic", align_corners=False, antialias=True).to(table.dtype)
        return torch.cat([table[:, :1], patch.permute(0, 2, 3, 1).reshape(1, h * w, dim)], 1)

    def position_table(self, height: int, width: int) -> Tensor:
        """[1, 1 + h*w, C] table for an input of height x width pixels (resized unless native)."""
        h, w = height // self.patch_size, width // self.patch_size
        if h * w == self.table_side ** 2 and height == width:
            return self.position_embeddings
        if torch.jit.is_tracing():
            # A fixed export size: the resized table is a constant of the graph (ONNX opset 17 has no
            # antialiased bicubic Resize), computed here outside the trace.
            state = torch._C._get_tracing_state()
            torch._C._set_tracing_state(None)
            try:
                with torch.no_grad():
                    return self._resized_table(h, w).detach().clone()
            finally:
                torch._C._set_tracing_state(state)
        return self._resized_table(h, w)

    def forward(self, x: Tensor, record: Optional[Dict] = None) -> Tensor:
        b, _, height, width = x.shape
        tokens = self.patch_embeddings(x)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], 1)
        table = self.position_table(height, width)
        if record is not None and table is not self.position_embeddings:
            record["backbone.position_embeddings_used"] = table
        tokens = tokens + table.to(tokens.dtype)
        n = self.num_windows
        if n == 1:
            return tokens
        h, w = height // self.patch_size, width // self.patch_size
        c = tokens.shape[-1]
        cls, grid = tokens[:, :1], tokens[:, 1:]
        grid = grid.reshape(b, n, h // n, n, w // n, c).permute(0, 1, 3, 2, 4, 5)  # b, row block, col block, ...
        grid = grid.reshape(b * n * n, (h // n) * (w // n), c)
        cls = cls.unsqueeze(1).expand(b, n * n, 1, c).reshape(b * n * n, 1, c)
        return torch.cat([cls, grid], 1)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.fuse_qkv = True  # False runs the three products apart, as the official model (and its export) does

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        if self.training or not self.fuse_qkv:
            q, k, v = (p(x).view(b, t, self.heads, c // self.heads).transpose(1, 2) for p in (self.query, self.key, self.value))
        else:  # one [3C, C] product instead of three [C, C] ones (a larger GEMM runs closer to peak; exports fold the concat)
            weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
            bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
            q, k, v = F.linear(x, weight, bias).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(b, t, c)


class SelfOutput(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.dense(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attention = SelfAttention(dim, heads)
        self.output = SelfOutput(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.attention(x))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1.0):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.lambda1


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class WindowedBlock(nn.Module):
    """Pre-norm ViT block; `global_attention` joins the n^2 windows of each image for the attention only."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, eps: float, num_windows: int, drop_path_rate: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attention = Attention(dim, heads)
        self.layer_scale1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale2 = LayerScale(dim)
        self.windows2, self.drop_path_rate = num_windows * num_windows, drop_path_rate

    def forward(self, x: Tensor, global_attention: bool) -> Tensor:
        y = self.norm1(x)
        if global_attention and self.windows2 > 1:
            bw, t, c = y.shape
            y = self.attention(y.reshape(bw // self.windows2, self.windows2 * t, c)).reshape(bw, t, c)
        else:
            y = self.attention(y)
        x = x + drop_path(self.layer_scale1(y), self.drop_path_rate, self.training)
        return x + drop_path(self.layer_scale2(self.mlp(self.norm2(x))), self.drop_path_rate, self.training)


class BlockStack(nn.Module):
    def __init__(self, blocks: List[WindowedBlock]):
        super().__init__()
        self.layer = nn.ModuleList(blocks)


class WindowedDinov2(nn.Module):
    """The ViT: forward(x [B, 3, H, W]) -> [B, C, H/p, W/p] maps after the layers in `out_indices` (1-indexed)."""

    def __init__(self, dim: int = 384, depth: int = 12, heads: int = 6, mlp_ratio: float = 4.0, patch_size: int = 16,
                 table_side: int = 24, num_windows: int = 2, out_indices: Sequence[int] = (3, 6, 9, 12),
                 windowed_blocks: Optional[Sequence[int]] = None, eps: float = 1e-6, drop_path_rate: float = 0.0):
        super().__init__()
        if not out_indices or max(out_indices) > depth or min(out_indices) < 1:
            raise ValueError(f"DINOv2 out_indices {list(out_indices)} must be layer numbers in 1..{depth}")
        self.embeddings = WindowedEmbeddings(dim, patch_size, table_side, num_windows)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.encoder = BlockStack([WindowedBlock(dim, heads, mlp_ratio, eps, num_windows, r) for r in rates])
        self.layernorm = nn.LayerNorm(dim, eps=eps)
        self.patch_size, self.num_windows, self.out_indices = patch_size, num_windows, list(out_indices)
        windowed = window_block_indexes(out_indices, depth) if windowed_blocks is None else list(windowed_blocks)
        self.global_blocks = [i not in set(windowed) for i in range(depth)]

    def _unwindow(self, x: Tensor, b: int, h: int, w: int) -> Tensor:
        """[B*n^2, 1 + hw/n^2, C] -> [B, C, h, w] (cls tokens dropped)."""
        n, c = self.num_windows, x.shape[-1]
        x = x[:, 1:]
        if n > 1:
            x = x.reshape(b, n, n, h // n, w // n, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()

    def forward(self, x: Tensor, record: Optional[Dict] = None) -> List[Tensor]:
        b, _, height, width = x.shape
        block = self.patch_size * self.num_windows
        if height % block or width % block:
            raise ValueError(f"RF-DETR's backbone needs image height and width divisible by {block} (patch size "
                             f"{self.patch_size} x {self.num_windows} windows), got {height}x{width}; resize or pad")
        h, w = height // self.patch_size, width // self.patch_size
        tokens = self.embeddings(x, record)
        feats = []
        for i in range(max(self.out_indices)):
            tokens = self.encoder.layer[i](tokens, self.global_blocks[i])
            if i + 1 in self.out_indices:
                feats.append(self._unwindow(self.layernorm(tokens), b, h, w))
        return feats


def vit_layer_id(name: str, num_layers: int) -> int:
    """Layer number of a DINOv2 parameter for layer-wise lr decay: embeddings 0, block i -> i + 1, rest num_layers + 1."""
    if "embeddings" in name:
        return 0
    marker = ".layer."
    if marker in name:
        return int(name[name.find(marker) + len(marker):].split(".")[0]) + 1
    return num_layers + 1


__all__ = ["WindowedDinov2", "window_block_indexes", "vit_layer_id"]
