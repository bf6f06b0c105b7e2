"""DAB-DETR transformer (Liu et al. 2022): encoder, anchor-box decoder and their layers.

Owns the layers that only DAB-DETR uses: the encoder whose positional term is rescaled by the
content (`query_scale`), and the decoder whose queries are 4-D anchor boxes (cx, cy, w, h)
refined layer by layer, with conditional cross-attention (content and sine-position halves
concatenated per head) modulated by the anchor's width and height.

Everything here is batch-first: tokens [B, S, C], queries [B, Q, C]. Parameter names equal the
official IDEA-Research/DAB-DETR checkpoints (`sa_qcontent_proj`, `ca_qpos_sine_proj`,
`ref_point_head`, `ref_anchor_head`, ...), so official weights load without renaming.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from edgedet.nn.box_ops import inverse_sigmoid
from edgedet.nn.mlp import MLP
from edgedet.nn.position_encoding import sine_embed_boxes

# The official code clamps anchors with this eps before taking logits.
ANCHOR_LOGIT_EPS = 1e-3

_ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "prelu": nn.PReLU,  # one learned slope: the `activation.weight` [1] key
    "selu": nn.SELU,
}


def make_activation(name: str) -> nn.Module:
    """Activation module by name (relu, gelu, prelu, selu)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'. Valid names: {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[name]()


class ProjectedAttention(nn.Module):
    """Multi-head attention on inputs that are already projected; only `out_proj` is learned.

    q [B, Lq, Dqk], k [B, S, Dqk], v [B, S, Dv] -> [B, Lq, Dv]. Dqk may differ from Dv
    (DAB-DETR's cross-attention uses Dqk = 2 * Dv); the softmax scale is (Dqk / heads) ** -0.5.
    """

    def __init__(self, value_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if value_dim % num_heads != 0:
            raise ValueError(f"value dim {value_dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.out_proj = nn.Linear(value_dim, value_dim)
        self.attn_drop = nn.Dropout(dropout)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        b, lq, dqk = q.shape
        s, dv = k.shape[1], v.shape[2]
        h = self.num_heads
        q = q.reshape(b, lq, h, dqk // h).transpose(1, 2)
        k = k.reshape(b, s, h, dqk // h).transpose(1, 2)
        v = v.reshape(b, s, h, dv // h).transpose(1, 2)
        scores = (q * (dqk // h) ** -0.5) @ k.transpose(-2, -1)  # [B, h, Lq, S]
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        weights = self.attn_drop(scores.softmax(dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(b, lq, dv)
        return self.out_proj(out)


class DABEncoderLayer(nn.Module):
    """Post-norm self-attention + FFN; the positional term is added to queries and keys."""

    def __init__(self, d_model: int, nheads: int, dim_feedforward: int, dropout: float, activation: str):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = make_activation(activation)

    def forward(self, src: Tensor, pos: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
        qk = src + pos
        attn = self.self_attn(qk, qk, src, key_padding_mask=padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class DABEncoder(nn.Module):
    """Encoder whose positional embedding is scaled element-wise by MLP(content) each layer."""

    def __init__(self, layer: DABEncoderLayer, num_layers: int, d_model: int, final_norm: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.query_scale = MLP(d_model, d_model, d_model, 2)
        # The official code adds this norm only when `pre_norm` is set (its layers stay post-norm).
        self.norm = nn.LayerNorm(d_model) if final_norm else None

    def forward(self, src: Tensor, pos: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
        """src, pos [B, S, C]; padding_mask [B, S] True at padding -> memory [B, S, C]."""
        out = src
        for layer in self.layers:
            out = layer(out, pos * self.query_scale(out), padding_mask)
        return self.norm(out) if self.norm is not None else out


class DABDecoderLayer(nn.Module):
    """Self-attention, conditional cross-attention and FFN, each post-norm.

    Queries and keys are built from separate content / position projections. In the
    cross-attention every head sees [content | sine position] (2 * head_dim channels);
    `ca_qpos_proj` (adding the query position to the content) exists only where used: the
    first layer, or every layer with `keep_query_pos`.
    """

    def __init__(self, d_model: int, nheads: int, dim_feedforward: int, dropout: float, activation: str, use_qpos_proj: bool):
        super().__init__()
        lin = lambda: nn.Linear(d_model, d_model)  # noqa: E731
        self.nheads = nheads
        self.sa_qcontent_proj, self.sa_qpos_proj = lin(), lin()
        self.sa_kcontent_proj, self.sa_kpos_proj, self.sa_v_proj = lin(), lin(), lin()
        self.self_attn = ProjectedAttention(d_model, nheads, dropout)
        self.norm1 = nn.LayerNorm(d_model)

        self.ca_qcontent_proj = lin()
        self.ca_qpos_proj = lin() if use_qpos_proj else None
        self.ca_kcontent_proj, self.ca_kpos_proj, self.ca_v_proj = lin(), lin(), lin()
        self.ca_qpos_sine_proj = lin()
        self.cross_attn = ProjectedAttention(d_model, nheads, dropout)

        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout, self.dropout1 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.activation = make_activation(activation)

    def _per_head_concat(self, a: Tensor, b: Tensor) -> Tensor:
        """[B, L, C] twice -> [B, L, 2C] laid out head by head: (a_h, b_h) for each head h."""
        bsz, n, c = a.shape
        h = self.nheads
        return torch.cat((a.view(bsz, n, h, c // h), b.view(bsz, n, h, c // h)), dim=3).view(bsz, n, 2 * c)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor,
        query_pos: Tensor,
        query_sine: Tensor,
        padding_mask: Optional[Tensor],
    ) -> Tensor:
        """tgt, query_pos, query_sine [B, Q, C]; memory, pos [B, S, C] -> [B, Q, C]."""
        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, self.sa_v_proj(tgt))))

        q = self.ca_qcontent_proj(tgt)
        k = self.ca_kcontent_proj(memory)
        k_pos = self.ca_kpos_proj(pos)
        if self.ca_qpos_proj is not None:
            q = q + self.ca_qpos_proj(query_pos)
            k = k + k_pos
        q = self._per_head_concat(q, self.ca_qpos_sine_proj(query_sine))
        k = self._per_head_concat(k, k_pos)
        attn = self.cross_attn(q, k, self.ca_v_proj(memory), key_padding_mask=padding_mask)
        tgt = self.norm2(tgt + self.dropout2(attn))

        ffn = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class DABDecoder(nn.Module):
    """Decoder over learnable anchors, refined layer by layer through the shared box head.

    `bbox_embed` is the model's box MLP (same module, so the checkpoint holds it under both
    `bbox_embed.*` and `transformer.decoder.bbox_embed.*`); set by the detector.
    """

    def __init__(self, layer_args: Tuple, num_layers: int, d_model: int, modulate_hw_attn: bool = True, keep_query_pos: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(
            DABDecoderLayer(*layer_args, use_qpos_proj=(i == 0 or keep_query_pos)) for i in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.d_model = d_model
        self.query_scale = MLP(d_model, d_model, d_model, 2)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.ref_anchor_head = MLP(d_model, d_model, 2, 2) if modulate_hw_attn else None
        self.bbox_embed: Optional[nn.Module] = None

    def _query_sine(self, out: Tensor, anchors: Tensor, layer_id: int) -> Tuple[Tensor, Tensor]:
        """Positional query (MLP of the anchor's sine) and the scaled (y, x) sine for cross-attention."""
        d = self.d_model
        sine = sine_embed_boxes(anchors, d // 2, 10000.0)  # [B, Q, 2d]: y, x, w, h
        query_pos = self.ref_point_head(sine)
        sine_xy = sine[..., :d]
        if layer_id > 0:  # the first layer sees the raw sine (its content is still zeros)
            sine_xy = sine_xy * self.query_scale(out)
        if self.ref_anchor_head is not None:
            # Scale each axis by (predicted reference size / anchor size): wide anchors get
            # a flatter attention along x, tall ones along y.
            ref_wh = self.ref_anchor_head(out).sigmoid()
            y_mod = (ref_wh[..., 1] / anchors[..., 3]).unsqueeze(-1)
            x_mod = (ref_wh[..., 0] / anchors[..., 2]).unsqueeze(-1)
            sine_xy = torch.cat((sine_xy[..., : d // 2] * y_mod, sine_xy[..., d // 2 :] * x_mod), dim=-1)
        return query_pos, sine_xy

    def forward(
        self, tgt: Tensor, memory: Tensor, pos: Tensor, anchors_unsigmoid: Tensor, padding_mask: Optional[Tensor]
    ) -> Tuple[Tensor, Tensor]:
        """
        tgt [B, Q, C] content queries, memory / pos [B, S, C], anchors_unsigmoid [B, Q, 4]
        (cx, cy, w, h before sigmoid), padding_mask [B, S] True at padding.
        Returns hs [L, B, Q, C] (each layer's output after `norm`) and anchors_cxcywh
        [L, B, Q, 4]: the anchor each layer was given (sigmoid space), for the box heads.
        """
        if self.bbox_embed is None:
            raise RuntimeError("DABDecoder.bbox_embed must be set to the detector's box head before forward")
        out = tgt
        anchors = anchors_unsigmoid.sigmoid()
        box_anchors = anchors  # what this layer's box output is built on
        hs: List[Tensor] = []
        per_layer_anchors: List[Tensor] = []
        for layer_id, layer in enumerate(self.layers):
            per_layer_anchors.append(box_anchors)
            query_pos, query_sine = self._query_sine(out, anchors, layer_id)
            out = layer(out, memory, pos, query_pos, query_sine, padding_mask)
            # Iterative anchor update on the un-normed output. As in the official DAB-DETR, the next
            # layer's box output is built on the refined anchor *with* its gradient (its box loss also
            # trains this layer's refinement); the next layer's queries get it detached.
            box_anchors = (self.bbox_embed(out) + inverse_sigmoid(anchors, ANCHOR_LOGIT_EPS)).sigmoid()
            anchors = box_anchors.detach()
            hs.append(self.norm(out))
        return torch.stack(hs), torch.stack(per_layer_anchors)


class DABTransformer(nn.Module):
    """Encoder + anchor decoder. Parameters: `encoder.*`, `decoder.*` (+ `patterns` if used)."""

    def __init__(
        self,
        d_model: int = 256,
        nheads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.0,
        activation: str = "prelu",
        encoder_final_norm: bool = False,
        modulate_hw_attn: bool = True,
        keep_query_pos: bool = False,
        num_patterns: int = 0,
    ):
        super().__init__()
        if d_model % nheads != 0:
            raise ValueError(f"hidden_dim {d_model} must be divisible by nheads {nheads}")
        enc_layer = DABEncoderLayer(d_model, nheads, dim_feedforward, dropout, activation)
        self.encoder = DABEncoder(enc_layer, num_encoder_layers, d_model, final_norm=encoder_final_norm)
        self.decoder = DABDecoder(
            (d_model, nheads, dim_feedforward, dropout, activation), num_decoder_layers, d_model, modulate_hw_attn, keep_query_pos
        )
        self.d_model = d_model
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.num_patterns = num_patterns
        self.patterns = nn.Embedding(num_patterns, d_model) if num_patterns > 0 else None

    def forward(self, src: Tensor, padding_mask: Tensor, anchors_unsigmoid: Tensor, pos: Tensor) -> Tuple[Tensor, Tensor]:
        """
        src [B, C, H, W] projected features, padding_mask [B, H, W] True at padding,
        anchors_unsigmoid [Q, 4] learned anchors, pos [B, C, H, W] position embedding.
        Returns (hs [L, B, Q', C], anchors_cxcywh [L, B, Q', 4]); Q' = Q * max(1, num_patterns).
        """
        b = src.shape[0]
        tokens = src.flatten(2).transpose(1, 2)
        pos_tokens = pos.flatten(2).transpose(1, 2)
        mask = padding_mask.flatten(1)
        memory = self.encoder(tokens, pos_tokens, mask)
        anchors = anchors_unsigmoid.unsqueeze(0).expand(b, -1, -1)
        q = anchors.shape[1]
        if self.patterns is None:
            tgt = memory.new_zeros(b, q, self.d_model)
        else:
            # Each pattern is paired with every anchor, pattern-major (as the official code orders them).
            tgt = self.patterns.weight[:, None, :].expand(-1, q, -1).reshape(1, -1, self.d_model).expand(b, -1, -1)
            anchors = anchors.repeat(1, self.num_patterns, 1)
        return self.decoder(tgt, memory, pos_tokens, anchors, mask)
