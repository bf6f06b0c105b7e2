"""2-D position encodings for image feature maps.

Input mask [B, H, W] is True at padding; output [B, 2*num_pos_feats, H, W] with the
y features first, then x (the order every reference implementation uses).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine of the normalised cumulative (unpadded) pixel position.

    - DETR: offset 0, temperature 10000.
    - Deformable DETR: offset 0.5 (centre of the pixel).
    - DAB-DETR / DINO ("SineHW"): temperature_h = temperature_w = 20, offset 0.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature_h: float = 10000.0,
        temperature_w: Optional[float] = None,
        normalize: bool = True,
        scale: float = 2 * math.pi,
        offset: float = 0.0,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature_h = temperature_h
        self.temperature_w = temperature_h if temperature_w is None else temperature_w
        self.normalize = normalize
        self.scale = scale
        self.offset = offset
        self.eps = eps

    def _freqs(self, temperature: float, device: torch.device) -> Tensor:
        idx = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        return temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / self.num_pos_feats)

    def forward(self, mask: Tensor) -> Tensor:
        not_mask = (~mask).to(torch.float32)
        y = not_mask.cumsum(1)
        x = not_mask.cumsum(2)
        if self.normalize:
            y = (y - self.offset) / (y[:, -1:, :] + self.eps) * self.scale
            x = (x - self.offset) / (x[:, :, -1:] + self.eps) * self.scale
        pos_x = x[..., None] / self._freqs(self.temperature_w, mask.device)
        pos_y = y[..., None] / self._freqs(self.temperature_h, mask.device)
        # interleave sin(even), cos(odd) -> [B, H, W, F]
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class PositionEmbeddingLearned(nn.Module):
    """Learned row/column tables (up to 50x50 feature maps). Parameters: row_embed, col_embed."""

    def __init__(self, num_pos_feats: int = 128, max_size: int = 50):
        super().__init__()
        self.row_embed = nn.Embedding(max_size, num_pos_feats)
        self.col_embed = nn.Embedding(max_size, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask: Tensor) -> Tensor:
        h, w = mask.shape[-2:]
        if h > self.row_embed.num_embeddings or w > self.col_embed.num_embeddings:
            raise ValueError(f"learned position embedding covers at most {self.row_embed.num_embeddings}^2 cells, got {h}x{w}")
        x = self.col_embed(torch.arange(w, device=mask.device))
        y = self.row_embed(torch.arange(h, device=mask.device))
        pos = torch.cat((x.unsqueeze(0).expand(h, w, -1), y.unsqueeze(1).expand(h, w, -1)), dim=-1)
        return pos.permute(2, 0, 1).unsqueeze(0).expand(mask.shape[0], -1, -1, -1)


def sine_embed_boxes(boxes: Tensor, num_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of normalised points or boxes (DAB-DETR / DINO query positions).

    [..., 2] (x, y) or [..., 4] (x, y, w, h) in [0, 1] -> [..., num_feats * k], ordered
    y, x, w, h (y before x, as the reference repositories do).
    """
    scale = 2 * math.pi
    idx = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    freqs = temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / num_feats)

    def embed(coord: Tensor) -> Tensor:
        p = coord[..., None] * scale / freqs
        return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=-1).flatten(-2)

    parts = [embed(boxes[..., 1]), embed(boxes[..., 0])]
    if boxes.shape[-1] == 4:
        parts += [embed(boxes[..., 2]), embed(boxes[..., 3])]
    elif boxes.shape[-1] != 2:
        raise ValueError(f"sine_embed_boxes expects [..., 2] or [..., 4], got {tuple(boxes.shape)}")
    return torch.cat(parts, dim=-1)
