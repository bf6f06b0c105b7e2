"""Deformable DETR transformer (Zhu et al. 2021): multi-scale deformable encoder and decoder.

Owns the token layout shared by every deformable family (Deformable DETR, DINO):
levels are flattened row-major and concatenated, `spatial_shapes` [L, 2] holds (H, W) per
level, `level_start_index` [L] the offset of each level and `valid_ratios` [B, L, 2] the
(w, h) fraction of each level that is not padding. Reference points are normalised (x, y)
or (cx, cy, w, h) relative to the unpadded image.

Module and parameter names equal fundamentalvision/Deformable-DETR's so its checkpoints
load unchanged (`encoder.layers.i.self_attn.sampling_offsets`, `decoder.layers.i.cross_attn`,
`level_embed`, `reference_points`, `enc_output`, `pos_trans`, ...).
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from edgedet.nn.box_ops import inverse_sigmoid
from edgedet.nn.ms_deform_attn import MSDeformAttn
from edgedet.nn.transformer import activation_fn
from edgedet.ops.msda import spatial_shapes_as_list


# ---------------------------------------------------------------- token layout helpers


def get_valid_ratios(mask: Tensor) -> Tensor:
    """One level's padding mask [B, H, W] (True at padding) -> [B, 2] valid (w, h) fractions."""
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).to(torch.float32)
    valid_w = (~mask[:, 0, :]).sum(1).to(torch.float32)
    return torch.stack([valid_w / w, valid_h / h], -1)


def flatten_levels(
    features: Sequence[Tensor], masks: Sequence[Tensor], pos_embeds: Sequence[Tensor], level_embed: Optional[Tensor]
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Flatten multi-scale maps into one token sequence.

    features [B, C, H_l, W_l], masks [B, H_l, W_l], pos_embeds [B, C, H_l, W_l] per level;
    level_embed [L, C] (added to the positions) or None.
    Returns src_flatten [B, S, C], mask_flatten [B, S], pos_flatten [B, S, C],
    spatial_shapes [L, 2] int64 (H, W), level_start_index [L] int64, valid_ratios [B, L, 2].
    """
    srcs, flat_masks, flat_pos, shapes = [], [], [], []
    for lvl, (src, mask, pos) in enumerate(zip(features, masks, pos_embeds)):
        shapes.append(tuple(src.shape[-2:]))
        srcs.append(src.flatten(2).transpose(1, 2))
        flat_masks.append(mask.flatten(1))
        pos = pos.flatten(2).transpose(1, 2)
        if level_embed is not None:
            pos = pos + level_embed[lvl].view(1, 1, -1)
        flat_pos.append(pos)
    device = srcs[0].device
    spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=device)
    level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
    valid_ratios = torch.stack([get_valid_ratios(m) for m in masks], 1)
    return torch.cat(srcs, 1), torch.cat(flat_masks, 1), torch.cat(flat_pos, 1), spatial_shapes, level_start_index, valid_ratios


def encoder_reference_points(spatial_shapes: Union[Tensor, Sequence[Tuple[int, int]]], valid_ratios: Tensor, device: torch.device) -> Tensor:
    """Centre of every encoder token, normalised to the unpadded image of each level.

    spatial_shapes [L, 2] (H, W), valid_ratios [B, L, 2] (w, h) -> [B, S, L, 2] (x, y).
    """
    points = []
    for lvl, (h, w) in enumerate(spatial_shapes_as_list(spatial_shapes)):
        ys = torch.arange(h, dtype=torch.float32, device=device) + 0.5
        xs = torch.arange(w, dtype=torch.float32, device=device) + 0.5
        ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
        points.append(torch.stack((ref_x, ref_y), -1))
    reference_points = torch.cat(points, 1)
    return reference_points[:, :, None] * valid_ratios[:, None]


def encoder_output_proposals(
    memory: Tensor, padding_mask: Tensor, spatial_shapes: Union[Tensor, Sequence[Tuple[int, int]]]
) -> Tuple[Tensor, Tensor]:
    """Two-stage proposals: one box per encoder token (Deformable DETR, section 4.2).

    memory [B, S, C], padding_mask [B, S] True at padding.
    Each token proposes a box centred on it, 0.05 * 2**level wide and high (normalised).
    Returns output_memory [B, S, C] (zero at padding and at unusable proposals) and
    output_proposals [B, S, 4] cxcywh in inverse-sigmoid space (+inf where unusable).
    """
    n = memory.shape[0]
    proposals, start = [], 0
    for lvl, (h, w) in enumerate(spatial_shapes_as_list(spatial_shapes)):
        mask = padding_mask[:, start : start + h * w].view(n, h, w)
        valid_h = (~mask[:, :, 0]).sum(1)
        valid_w = (~mask[:, 0, :]).sum(1)
        grid_y, grid_x = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=memory.device),
            torch.arange(w, dtype=torch.float32, device=memory.device),
            indexing="ij",
        )
        grid = torch.stack([grid_x, grid_y], -1)
        scale = torch.stack([valid_w, valid_h], 1).view(n, 1, 1, 2)
        grid = (grid.unsqueeze(0).expand(n, -1, -1, -1) + 0.5) / scale
        wh = torch.ones_like(grid) * 0.05 * (2.0**lvl)
        proposals.append(torch.cat((grid, wh), -1).view(n, -1, 4))
        start += h * w
    output_proposals = torch.cat(proposals, 1)
    # Proposals touching the image border are dropped: their logit would be huge.
    valid = ((output_proposals > 0.01) & (output_proposals < 0.99)).all(-1, keepdim=True)
    output_proposals = torch.log(output_proposals / (1 - output_proposals))
    output_proposals = output_proposals.masked_fill(padding_mask.unsqueeze(-1), float("inf"))
    output_proposals = output_proposals.masked_fill(~valid, float("inf"))
    output_memory = memory.masked_fill(padding_mask.unsqueeze(-1), 0.0).masked_fill(~valid, 0.0)
    return output_memory, output_proposals


def proposal_pos_embed(proposals_unact: Tensor, num_pos_feats: int, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of proposals [B, Q, 4] (inverse-sigmoid space) -> [B, Q, 4 * num_pos_feats].

    Ordered cx, cy, w, h; sin/cos interleaved per coordinate (the two-stage query position).
    """
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals_unact.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos = proposals_unact.sigmoid() * (2 * math.pi)
    pos = pos[:, :, :, None] / dim_t
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(2)


def _clones(layer: Union[nn.Module, Callable[[], nn.Module]], n: int) -> nn.ModuleList:
    if isinstance(layer, nn.Module):
        return nn.ModuleList(copy.deepcopy(layer) for _ in range(n))
    return nn.ModuleList(layer() for _ in range(n))


# ---------------------------------------------------------------- encoder


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention over all levels (+norm1), FFN (+norm2)."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        msda_impl: str = "pytorch",
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, impl=msda_impl)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = activation_fn(activation)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Optional[Tensor],
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """src, pos [B, S, C]; reference_points [B, S, L, 2]; padding_mask [B, S] -> [B, S, C]."""
        query = src if pos is None else src + pos
        src2 = self.self_attn(query, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.dropout1(src2))
        src2 = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(src2))


class DeformableEncoder(nn.Module):
    """`num_layers` encoder layers (deep copies of a layer, or built by a factory), no final norm."""

    def __init__(self, layer_factory_or_layer: Union[nn.Module, Callable[[], nn.Module]], num_layers: int):
        super().__init__()
        self.layers = _clones(layer_factory_or_layer, num_layers)
        self.num_layers = num_layers

    def forward(
        self,
        src: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        pos: Optional[Tensor] = None,
        padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """src, pos [B, S, C]; valid_ratios [B, L, 2]; padding_mask [B, S] -> memory [B, S, C]."""
        reference_points = encoder_reference_points(spatial_shapes, valid_ratios, src.device)
        out = src
        for layer in self.layers:
            out = layer(out, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return out


# ---------------------------------------------------------------- decoder


class DeformableDecoderLayer(nn.Module):
    """Post-norm layer: self-attention (+norm2), deformable cross-attention (+norm1), FFN (+norm3).

    The norm numbering follows the reference checkpoints (norm1 belongs to cross-attention).
    """

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        msda_impl: str = "pytorch",
    ):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, impl=msda_impl)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = activation_fn(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Optional[Tensor],
        reference_points: Tensor,
        src: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        src_padding_mask: Optional[Tensor] = None,
        self_attn_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """tgt, query_pos [B, Q, C]; reference_points [B, Q, L, 2|4]; src [B, S, C] -> [B, Q, C].

        `self_attn_mask` [Q, Q] (True = blocked) keeps denoising / one-to-many query groups apart.
        """
        q = k = tgt if query_pos is None else tgt + query_pos
        tgt2 = self.self_attn(q, k, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        query = tgt if query_pos is None else tgt + query_pos
        tgt2 = self.cross_attn(query, reference_points, src, spatial_shapes, level_start_index, src_padding_mask)
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        tgt2 = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(tgt2))


class DeformableDecoder(nn.Module):
    """Decoder returning every layer's output and reference points.

    With iterative box refinement the model sets `bbox_embed` (one MLP per layer): each layer
    refines the previous reference boxes; the refined boxes are detached before the next layer.
    Two-stage models also set `class_embed` (the encoder head is its last entry).
    """

    def __init__(self, layer_factory_or_layer: Union[nn.Module, Callable[[], nn.Module]], num_layers: int):
        super().__init__()
        self.layers = _clones(layer_factory_or_layer, num_layers)
        self.num_layers = num_layers
        self.bbox_embed: Optional[nn.ModuleList] = None
        self.class_embed: Optional[nn.ModuleList] = None

    def forward(
        self,
        tgt: Tensor,
        reference_points: Tensor,
        src: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        query_pos: Optional[Tensor] = None,
        src_padding_mask: Optional[Tensor] = None,
        self_attn_mask: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor]:
        """tgt [B, Q, C]; reference_points [B, Q, 2|4] normalised (sigmoid space).

        Returns hs [num_layers, B, Q, C] and references [num_layers, B, Q, 2|4]: the
        reference points each layer's output refines (entry i is the input of layer i+1).
        """
        output = tgt
        intermediate, intermediate_refs = [], []
        for lid, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                ratios = torch.cat([valid_ratios, valid_ratios], -1)
            else:
                ratios = valid_ratios
            ref_input = reference_points[:, :, None] * ratios[:, None]
            output = layer(output, query_pos, ref_input, src, spatial_shapes, level_start_index, src_padding_mask,
                           self_attn_mask)
            if self.bbox_embed is not None:
                delta = self.bbox_embed[lid](output)
                if reference_points.shape[-1] == 4:
                    new_ref = (delta + inverse_sigmoid(reference_points)).sigmoid()
                else:
                    new_ref = torch.cat([delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1).sigmoid()
                reference_points = new_ref.detach()
            intermediate.append(output)
            intermediate_refs.append(reference_points)
        return torch.stack(intermediate), torch.stack(intermediate_refs)


# ---------------------------------------------------------------- full transformer


class DeformableTransformer(nn.Module):
    """Encoder + decoder over multi-scale maps; single-stage (learned queries) or two-stage.

    Single-stage: `query_embed` [Q, 2C] gives (query position | target); `reference_points`
    (Linear C->2) turns the position into the initial reference point.
    Two-stage: every encoder token proposes a box, the top `two_stage_num_proposals` by the
    decoder's last `class_embed` become reference boxes and (via `pos_trans`) the queries.
    """

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        num_feature_levels: int = 4,
        dec_n_points: int = 4,
        enc_n_points: int = 4,
        two_stage: bool = False,
        two_stage_num_proposals: int = 300,
        msda_impl: str = "pytorch",
    ):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        enc_layer = DeformableEncoderLayer(
            d_model, dim_feedforward, dropout, activation, num_feature_levels, nhead, enc_n_points, msda_impl
        )
        self.encoder = DeformableEncoder(enc_layer, num_encoder_layers)
        dec_layer = DeformableDecoderLayer(
            d_model, dim_feedforward, dropout, activation, num_feature_levels, nhead, dec_n_points, msda_impl
        )
        self.decoder = DeformableDecoder(dec_layer, num_decoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embed)

    def forward(
        self,
        srcs: Sequence[Tensor],
        masks: Sequence[Tensor],
        pos_embeds: Sequence[Tensor],
        query_embed: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
        """srcs/pos_embeds [B, C, H_l, W_l], masks [B, H_l, W_l] per level; query_embed [Q, 2C].

        Returns hs [num_dec, B, Q, C], init_reference [B, Q, 2|4], inter_references
        [num_dec, B, Q, 2|4] (sigmoid space), and for two-stage enc_outputs_class [B, S, K]
        and enc_outputs_coord_unact [B, S, 4] (None otherwise).
        """
        if not self.two_stage and query_embed is None:
            raise ValueError("a single-stage DeformableTransformer needs query_embed [num_queries, 2 * d_model]")
        src, mask, pos, spatial_shapes, level_start_index, valid_ratios = flatten_levels(
            srcs, masks, pos_embeds, self.level_embed
        )
        memory = self.encoder(src, spatial_shapes, level_start_index, valid_ratios, pos, mask)
        bs, _, c = memory.shape
        enc_class = enc_coord_unact = None
        if self.two_stage:
            tgt, query_pos, reference_points, enc_class, enc_coord_unact = self._select_proposals(memory, mask, spatial_shapes)
        else:
            query_pos, tgt = torch.split(query_embed, c, dim=1)
            query_pos = query_pos.unsqueeze(0).expand(bs, -1, -1)
            tgt = tgt.unsqueeze(0).expand(bs, -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()
        hs, inter_references = self.decoder(
            tgt, reference_points, memory, spatial_shapes, level_start_index, valid_ratios, query_pos, mask
        )
        return hs, reference_points, inter_references, enc_class, enc_coord_unact

    def _select_proposals(self, memory: Tensor, mask: Tensor, spatial_shapes: Tensor):
        """Two-stage: score every encoder token's proposal, keep the top-k as decoder queries."""
        if self.decoder.class_embed is None or self.decoder.bbox_embed is None:
            raise RuntimeError("two-stage DeformableTransformer needs decoder.class_embed and decoder.bbox_embed set by the model")
        topk = self.two_stage_num_proposals
        if memory.shape[1] < topk:
            raise ValueError(
                f"two-stage needs at least {topk} encoder tokens (num_queries) but the image gives {memory.shape[1]}; "
                "use a larger input or fewer queries"
            )
        output_memory, output_proposals = encoder_output_proposals(memory, mask, spatial_shapes)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        head = self.decoder.num_layers
        enc_class = self.decoder.class_embed[head](output_memory)
        enc_coord_unact = self.decoder.bbox_embed[head](output_memory) + output_proposals
        # Ranked by the first class's logit, as the reference does (it trains the encoder head that way).
        topk_idx = torch.topk(enc_class[..., 0], topk, dim=1)[1]
        topk_coords_unact = torch.gather(enc_coord_unact, 1, topk_idx.unsqueeze(-1).expand(-1, -1, 4)).detach()
        reference_points = topk_coords_unact.sigmoid()
        pos_feats = self.d_model // 2
        query = self.pos_trans_norm(self.pos_trans(proposal_pos_embed(topk_coords_unact, pos_feats)))
        query_pos, tgt = torch.split(query, self.d_model, dim=2)
        return tgt, query_pos, reference_points, enc_class, enc_coord_unact
