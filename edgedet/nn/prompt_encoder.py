"""Visual prompts -> class embeddings, and the prompt-alignment classifier (T-Rex2 style).

`VisualPromptEncoder`: for every prompt class k of an image, its N exemplar boxes (a point is a
box of zero size) become queries = learned content (one embedding for boxes, one for points) +
position (sine embedding of the box, then a linear layer). A learned *universal* token whose
reference box is the whole image joins them. Each layer: multi-scale deformable cross-attention
into the image's encoder memory at the prompt boxes -> self-attention among the class's tokens
(invalid boxes are masked out as keys) -> FFN. The universal token's output, projected and
L2-normalised, is the class's prompt embedding. Classes never attend to each other, so one
class's boxes cannot change another's embedding.

`PromptAlignment`: scores queries against K prompts: scale * cos(W q, p) + bias -> logits
[B, Q, K] (sigmoid / focal). Slots marked invalid in `prompt_mask` get MASKED_LOGIT (~ -inf).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.nn.ms_deform_attn import MSDeformAttn
from edgedet.nn.position_encoding import sine_embed_boxes

MASKED_LOGIT = -1.0e4  # sigmoid -> 0; finite so losses and exported top-k stay NaN-free
WHOLE_IMAGE_CXCYWH = (0.5, 0.5, 1.0, 1.0)


def as_bool(mask: Tensor) -> Tensor:
    """Cast only when needed: a traced no-op Cast on a bool graph input renames that input in OpenVINO."""
    return mask if mask.dtype == torch.bool else mask.to(torch.bool)


class PromptEncoderLayer(nn.Module):
    """Deformable cross-attention (per token) -> self-attention (per class) -> FFN, post-norm."""

    def __init__(self, d_model: int, d_ffn: int, n_heads: int, n_levels: int, n_points: int, msda_impl: str):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, impl=msda_impl)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tokens: Tensor, pos: Tensor, refs: Tensor, key_padding: Tensor, memory: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor, memory_padding_mask: Optional[Tensor]) -> Tensor:
        """tokens, pos [B, K, T, D]; refs [B, K, T, L, 4]; key_padding [B*K, T] True = ignore -> [B, K, T, D]."""
        b, k, t, d = tokens.shape
        q = (tokens + pos).reshape(b, k * t, d)
        ca = self.cross_attn(q, refs.reshape(b, k * t, *refs.shape[-2:]), memory, spatial_shapes, level_start_index,
                             memory_padding_mask)
        x = self.norm1(tokens + ca.view(b, k, t, d)).reshape(b * k, t, d)
        qk = x + pos.reshape(b * k, t, d)
        sa = self.self_attn(qk, qk, x, key_padding_mask=key_padding, need_weights=False)[0]
        x = self.norm2(x + sa)
        x = self.norm3(x + self.linear2(F.relu(self.linear1(x))))
        return x.view(b, k, t, d)


class VisualPromptEncoder(nn.Module):
    """Exemplar boxes on an image -> one prompt embedding per class.

    forward(memory [B, S, D], spatial_shapes [L, 2], level_start_index [L], memory_padding_mask [B, S],
            valid_ratios [B, L, 2], boxes_cxcywh [B, K, N, 4] normalised, box_valid [B, K, N] bool)
    -> (embeddings [B, K, prompt_dim] unit length, class_valid [B, K] = any valid box).
    """

    def __init__(self, d_model: int, prompt_dim: int, n_levels: int, n_heads: int = 8, n_points: int = 4,
                 num_layers: int = 1, d_ffn: int = 1024, msda_impl: str = "pytorch"):
        super().__init__()
        self.d_model = d_model
        self.content = nn.Embedding(2, d_model)  # row 0: box prompt, row 1: point prompt
        self.universal = nn.Embedding(1, d_model)
        self.pos_proj = nn.Linear(2 * d_model, d_model)
        self.layers = nn.ModuleList(
            PromptEncoderLayer(d_model, d_ffn, n_heads, n_levels, n_points, msda_impl) for _ in range(num_layers)
        )
        self.out_proj = nn.Linear(d_model, prompt_dim)

    def forward(self, memory: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                memory_padding_mask: Optional[Tensor], valid_ratios: Tensor, boxes_cxcywh: Tensor,
                box_valid: Tensor) -> Tuple[Tensor, Tensor]:
        if boxes_cxcywh.dim() != 4 or boxes_cxcywh.shape[-1] != 4:
            raise ValueError(f"prompt boxes must be [B, K, N, 4] cxcywh, got {tuple(boxes_cxcywh.shape)}")
        if box_valid.shape != boxes_cxcywh.shape[:3]:
            raise ValueError(f"box_valid {tuple(box_valid.shape)} must be boxes' [B, K, N] {tuple(boxes_cxcywh.shape[:3])}")
        b, k, n, _ = boxes_cxcywh.shape
        box_valid = as_bool(box_valid)
        whole = boxes_cxcywh.new_tensor(WHOLE_IMAGE_CXCYWH)
        # Invalid slots get a harmless box so nothing non-finite enters the graph; they are masked anyway.
        boxes = torch.where(box_valid[..., None], boxes_cxcywh, whole)
        is_point = (boxes[..., 2:] <= 0).all(-1)
        content = torch.where(is_point[..., None], self.content.weight[1], self.content.weight[0])
        universal = self.universal.weight.view(1, 1, 1, -1).expand(b, k, 1, -1)
        tokens = torch.cat([universal, content], 2)  # [B, K, 1 + N, D]
        refs = torch.cat([whole.view(1, 1, 1, 4).expand(b, k, 1, 4), boxes], 2)
        pos = self.pos_proj(sine_embed_boxes(refs, self.d_model // 2))
        ratios = torch.cat([valid_ratios, valid_ratios], -1)[:, None, None]  # [B, 1, 1, L, 4]
        refs_in = refs[:, :, :, None] * ratios
        key_padding = torch.cat([box_valid.new_ones(b, k, 1), box_valid], 2).logical_not().reshape(b * k, n + 1)
        for layer in self.layers:
            tokens = layer(tokens, pos, refs_in, key_padding, memory, spatial_shapes, level_start_index, memory_padding_mask)
        emb = F.normalize(self.out_proj(tokens[:, :, 0]), dim=-1)
        return emb, box_valid.any(-1)


class PromptAlignment(nn.Module):
    """Query embeddings vs prompt embeddings: logits = exp(log_scale) * cos(W q, p) + bias.

    forward(queries [B, Q, D], prompts [B, K, Dp] (or [K, Dp]), prompt_mask [B, K] bool, True = valid)
    -> logits [B, Q, K]; invalid slots are MASKED_LOGIT.
    """

    def __init__(self, d_model: int, prompt_dim: int, init_scale: float = 10.0, prior_prob: float = 0.01):
        super().__init__()
        self.query_proj = nn.Linear(d_model, prompt_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.tensor(-math.log((1 - prior_prob) / prior_prob)))

    def scores(self, query_embeddings: Tensor, prompts: Tensor, prompt_mask: Optional[Tensor] = None) -> Tensor:
        """Already projected query embeddings [B, Q, Dp] -> logits [B, Q, K]."""
        if prompts.dim() == 2:
            prompts = prompts.unsqueeze(0).expand(query_embeddings.shape[0], -1, -1)
        q = F.normalize(query_embeddings, dim=-1)
        p = F.normalize(prompts, dim=-1)
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()
        logits = torch.matmul(q, p.transpose(1, 2)) * scale + self.bias
        if prompt_mask is not None:
            if prompt_mask.dim() == 1:
                prompt_mask = prompt_mask.unsqueeze(0)
            logits = logits.masked_fill(~as_bool(prompt_mask)[:, None, :], MASKED_LOGIT)
        return logits

    def forward(self, queries: Tensor, prompts: Tensor, prompt_mask: Optional[Tensor] = None) -> Tensor:
        return self.scores(self.query_proj(queries), prompts, prompt_mask)


def average_prompts(embeddings: Tensor, valid: Tensor) -> Tuple[Tensor, Tensor]:
    """Average prompt embeddings over sources (images, or text and images) per class.

    embeddings [M, K, Dp] unit vectors, valid [M, K] bool -> (mean re-normalised [K, Dp], any valid [K]).
    A class with no valid source gets a zero vector and valid False.
    """
    w = valid.to(embeddings.dtype)[..., None]
    total = (embeddings * w).sum(0)
    count = w.sum(0)
    mean = F.normalize(total / count.clamp(min=1.0), dim=-1)
    return mean * (count > 0), valid.any(0)


__all__ = ["as_bool", "VisualPromptEncoder", "PromptEncoderLayer", "PromptAlignment", "average_prompts", "MASKED_LOGIT"]
