"""DETR's encoder-decoder transformer (Carion et al. 2020).

Differs from `torch.nn.Transformer` the way DETR needs:
- positional encodings are added to queries and keys in every attention layer (not to values);
- the decoder returns every layer's output, each passed through the shared final norm
  (auxiliary losses read them);
- post-norm (default) or pre-norm layers; pre-norm adds a final encoder norm.

Tensors are batch-first: [B, L, C]. Parameter names (`self_attn.in_proj_weight`,
`multihead_attn`, `linear1`, `norm1`..`norm3`, `decoder.norm`) equal facebookresearch/detr's,
so its checkpoints load unchanged.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}


def activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'. Valid names: {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _add(x: Tensor, pos: Optional[Tensor]) -> Tensor:
    return x if pos is None else x + pos


class TransformerEncoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", normalize_before: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = activation_fn(activation)
        self.normalize_before = normalize_before

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))

    def forward(self, src: Tensor, key_padding_mask: Optional[Tensor] = None, pos: Optional[Tensor] = None) -> Tensor:
        """src, pos [B, S, C]; key_padding_mask [B, S] True at padding -> [B, S, C]."""
        if self.normalize_before:
            src2 = self.norm1(src)
            q = k = _add(src2, pos)
            src = src + self.dropout1(self.self_attn(q, k, src2, key_padding_mask=key_padding_mask, need_weights=False)[0])
            return src + self.dropout2(self._ffn(self.norm2(src)))
        q = k = _add(src, pos)
        src2 = self.self_attn(q, k, src, key_padding_mask=key_padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(src2))
        return self.norm2(src + self.dropout2(self._ffn(src)))


class TransformerDecoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", normalize_before: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = activation_fn(activation)
        self.normalize_before = normalize_before

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))

    def forward(self, tgt: Tensor, memory: Tensor, memory_key_padding_mask: Optional[Tensor] = None,
                pos: Optional[Tensor] = None, query_pos: Optional[Tensor] = None) -> Tensor:
        """tgt, query_pos [B, Q, C]; memory, pos [B, S, C]; memory_key_padding_mask [B, S] -> [B, Q, C]."""
        if self.normalize_before:
            tgt2 = self.norm1(tgt)
            q = k = _add(tgt2, query_pos)
            tgt = tgt + self.dropout1(self.self_attn(q, k, tgt2, need_weights=False)[0])
            tgt2 = self.norm2(tgt)
            tgt2 = self.multihead_attn(_add(tgt2, query_pos), _add(memory, pos), memory,
                                       key_padding_mask=memory_key_padding_mask, need_weights=False)[0]
            tgt = tgt + self.dropout2(tgt2)
            return tgt + self.dropout3(self._ffn(self.norm3(tgt)))
        q = k = _add(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt, need_weights=False)[0]))
        tgt2 = self.multihead_attn(_add(tgt, query_pos), _add(memory, pos), memory,
                                   key_padding_mask=memory_key_padding_mask, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        return self.norm3(tgt + self.dropout3(self._ffn(tgt)))


class TransformerEncoder(nn.Module):
    def __init__(self, layer: nn.Module, num_layers: int, norm: Optional[nn.Module] = None):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src: Tensor, key_padding_mask: Optional[Tensor] = None, pos: Optional[Tensor] = None) -> Tensor:
        out = src
        for layer in self.layers:
            out = layer(out, key_padding_mask=key_padding_mask, pos=pos)
        return out if self.norm is None else self.norm(out)


class TransformerDecoder(nn.Module):
    """Returns [num_layers, B, Q, C]: every layer's output passed through `norm`."""

    def __init__(self, layer: nn.Module, num_layers: int, norm: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, tgt: Tensor, memory: Tensor, memory_key_padding_mask: Optional[Tensor] = None,
                pos: Optional[Tensor] = None, query_pos: Optional[Tensor] = None) -> Tensor:
        out = tgt
        intermediate = []
        for layer in self.layers:
            out = layer(out, memory, memory_key_padding_mask=memory_key_padding_mask, pos=pos, query_pos=query_pos)
            intermediate.append(self.norm(out))
        return torch.stack(intermediate)


class Transformer(nn.Module):
    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, activation: str = "relu",
                 normalize_before: bool = False):
        super().__init__()
        enc_layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation, normalize_before)
        self.encoder = TransformerEncoder(enc_layer, num_encoder_layers, nn.LayerNorm(d_model) if normalize_before else None)
        dec_layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, activation, normalize_before)
        self.decoder = TransformerDecoder(dec_layer, num_decoder_layers, nn.LayerNorm(d_model))
        self.d_model = d_model
        self.nhead = nhead
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos_embed: Tensor) -> Tuple[Tensor, Tensor]:
        """src, pos_embed [B, C, H, W]; mask [B, H, W] True at padding; query_embed [Q, C].

        Returns hs [num_decoder_layers, B, Q, C] (normed) and memory [B, C, H, W].
        """
        bs, c, h, w = src.shape
        src = src.flatten(2).transpose(1, 2)
        pos_embed = pos_embed.flatten(2).transpose(1, 2)
        mask = mask.flatten(1)
        query_pos = query_embed.unsqueeze(0).expand(bs, -1, -1)
        # Object queries start at zero; only their positions differ.
        tgt = torch.zeros_like(query_pos)
        memory = self.encoder(src, key_padding_mask=mask, pos=pos_embed)
        hs = self.decoder(tgt, memory, memory_key_padding_mask=mask, pos=pos_embed, query_pos=query_pos)
        return hs, memory.transpose(1, 2).reshape(bs, c, h, w)
