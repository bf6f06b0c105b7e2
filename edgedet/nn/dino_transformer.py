"""DINO's transformer: deformable encoder, mixed query selection, box-refining decoder.

- Encoder: the Deformable-DETR encoder (`edgedet.nn.deformable_transformer`), reused as is.
- Mixed query selection: every encoder token proposes a box (a fixed-size box at its pixel,
  refined by `enc_out_bbox_embed`) scored by `enc_out_class_embed`; the top-K tokens by best
  class logit give the decoder's initial anchors (detached), while the content queries stay the
  learned `tgt_embed`.
- Decoder (self-attention -> deformable cross-attention -> FFN, post-norm): each layer refines
  its anchor box. "Look forward twice": layer i's predicted box is built on the *un-detached*
  box of layer i-1, so layer i's box loss also trains layer i-1's box head; only the anchor fed
  forward as the next layer's input is detached.

Parameter names follow the reference checkpoints (`transformer.decoder.layers.{i}.cross_attn`,
`norm1` after cross-attention, `self_attn` + `norm2`, `linear1/2` + `norm3`, ...).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from edgedet.nn.box_ops import inverse_sigmoid
from edgedet.nn.deformable_transformer import (
    DeformableDecoderLayer,
    DeformableEncoder,
    DeformableEncoderLayer,
    encoder_output_proposals,
    flatten_levels,
)
from edgedet.nn.denoising import DenoisingQueries, prepend_denoising
from edgedet.nn.mlp import MLP
from edgedet.nn.ms_deform_attn import MSDeformAttn
from edgedet.nn.position_encoding import sine_embed_boxes

# DINO's inverse_sigmoid clamps at 1e-3 (Deformable-DETR uses 1e-5).
INVERSE_SIGMOID_EPS = 1e-3


class DINODecoder(nn.Module):
    """Stack of Deformable-DETR decoder layers (ReLU FFN) with iterative box refinement.

    `bbox_embed` / `class_embed` (ModuleLists, one entry per layer, possibly the same module) are
    attached by the detector, which registers the very same objects at its top level.
    """

    def __init__(self, num_layers: int, d_model: int = 256, d_ffn: int = 2048, dropout: float = 0.0, n_heads: int = 8,
                 n_levels: int = 4, n_points: int = 4, msda_impl: str = "pytorch", look_forward_twice: bool = True):
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableDecoderLayer(d_model, d_ffn, dropout, "relu", n_levels, n_heads, n_points, msda_impl)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        # Sine features of the 4 box coordinates (d_model/2 each) -> query position.
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.d_model = d_model
        self.look_forward_twice = look_forward_twice
        self.bbox_embed: Optional[nn.ModuleList] = None
        self.class_embed: Optional[nn.ModuleList] = None

    def forward(self, tgt: Tensor, refpoints_unsig: Tensor, memory: Tensor, memory_padding_mask: Optional[Tensor],
                spatial_shapes: Tensor, level_start_index: Tensor, valid_ratios: Tensor,
                self_attn_mask: Optional[Tensor] = None) -> Tuple[List[Tensor], List[Tensor]]:
        """
        tgt             [B, Nq, D] content queries
        refpoints_unsig [B, Nq, 4] initial anchors (cxcywh before sigmoid)
        valid_ratios    [B, L, 2] unpadded fraction (w, h) of each level
        returns         (hs: per layer [B, Nq, D] after `norm`, boxes: per layer [B, Nq, 4] sigmoid cxcywh)
        """
        if self.bbox_embed is None:
            raise RuntimeError("DINODecoder.bbox_embed is not set; the detector attaches its box heads")
        reference = refpoints_unsig.sigmoid()
        # The box each layer's prediction is built on: un-detached for look-forward-twice.
        reference_for_output = reference
        ratios = torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # [B, 1, L, 4]
        hs, boxes = [], []
        output = tgt
        for i, layer in enumerate(self.layers):
            reference_input = reference[:, :, None] * ratios
            query_sine = sine_embed_boxes(reference_input[:, :, 0], self.d_model // 2, 10000.0)
            query_pos = self.ref_point_head(query_sine)
            output = layer(output, query_pos, reference_input, memory, spatial_shapes, level_start_index,
                           memory_padding_mask, self_attn_mask)
            normed = self.norm(output)
            head = self.bbox_embed[i]
            # Layer i's prediction (from the normed output) on top of layer i-1's box.
            prev = reference_for_output if self.look_forward_twice else reference
            boxes.append((head(normed) + inverse_sigmoid(prev, INVERSE_SIGMOID_EPS)).sigmoid())
            hs.append(normed)
            # The anchor update uses the un-normed output, as the reference implementation does.
            new_reference = (head(output) + inverse_sigmoid(reference, INVERSE_SIGMOID_EPS)).sigmoid()
            reference_for_output = new_reference
            reference = new_reference.detach()
        return hs, boxes


class DINOTransformer(nn.Module):
    """Encoder + two-stage query selection + decoder. Keys: `level_embed`, `encoder`, `decoder`,
    `tgt_embed`, `enc_output`, `enc_output_norm`, `enc_out_bbox_embed`, `enc_out_class_embed`."""

    def __init__(self, d_model: int = 256, n_heads: int = 8, num_queries: int = 900,
                 num_encoder_layers: int = 6, num_decoder_layers: int = 6, dim_feedforward: int = 2048,
                 dropout: float = 0.0, num_feature_levels: int = 4, enc_n_points: int = 4, dec_n_points: int = 4,
                 msda_impl: str = "pytorch", look_forward_twice: bool = True, embed_init_tgt: bool = True):
        super().__init__()
        self.d_model, self.num_queries, self.num_feature_levels = d_model, num_queries, num_feature_levels
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.encoder = DeformableEncoder(
            DeformableEncoderLayer(d_model, dim_feedforward, dropout, "relu", num_feature_levels, n_heads, enc_n_points, msda_impl),
            num_encoder_layers,
        )
        self.decoder = DINODecoder(num_decoder_layers, d_model, dim_feedforward, dropout, n_heads, num_feature_levels,
                                   dec_n_points, msda_impl, look_forward_twice)
        # Learned content queries; without them the selected encoder tokens serve (no `tgt_embed` key).
        self.tgt_embed = nn.Embedding(num_queries, d_model) if embed_init_tgt else None
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self._reset_parameters()
        # The encoder's proposal heads are attached by the detector (initialised like its own heads,
        # possibly shared with them), as `decoder.bbox_embed` / `decoder.class_embed` are.
        self.enc_out_bbox_embed: Optional[nn.Module] = None
        self.enc_out_class_embed: Optional[nn.Module] = None

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def select_queries(self, memory: Tensor, memory_padding_mask: Tensor, spatial_shapes: Tensor) -> Dict[str, Tensor]:
        """Mixed query selection over encoder tokens memory [B, S, D].

        Returns topk_indices [B, K] (descending score), refpoints_unsig [B, K, 4] (refined, un-detached),
        proposals_unsig [B, K, 4] (raw proposals), tokens [B, K, D] (enc_output-normed memory).
        """
        if self.enc_out_class_embed is None or self.enc_out_bbox_embed is None:
            raise RuntimeError("DINOTransformer.enc_out_class_embed / enc_out_bbox_embed are not set; the detector attaches them")
        num_tokens = memory.shape[1]
        if num_tokens < self.num_queries:
            raise ValueError(
                f"the encoder has {num_tokens} tokens but num_queries is {self.num_queries}; "
                "use larger images or fewer queries"
            )
        output_memory, proposals = encoder_output_proposals(memory, memory_padding_mask, spatial_shapes)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        scores = self.enc_out_class_embed(output_memory).max(-1)[0]
        coords_unsig = self.enc_out_bbox_embed(output_memory) + proposals
        topk = torch.topk(scores, self.num_queries, dim=1)[1]

        def take(x: Tensor) -> Tensor:
            return torch.gather(x, 1, topk[..., None].expand(-1, -1, x.shape[-1]))

        return {"topk_indices": topk, "refpoints_unsig": take(coords_unsig), "proposals_unsig": take(proposals),
                "tokens": take(output_memory)}

    def forward(self, srcs: List[Tensor], masks: List[Tensor], pos_embeds: List[Tensor],
                dn: Optional[DenoisingQueries] = None) -> Dict[str, object]:
        """
        srcs, pos_embeds  per level [B, D, H_l, W_l]; masks per level [B, H_l, W_l] True at padding
        dn                denoising queries placed in front of the matching queries (training)
        returns dict: hs (list per layer [B, pad+K, D]), boxes (list per layer [B, pad+K, 4] sigmoid),
                      interm_logits [B, K, C], interm_boxes [B, K, 4], init_proposals [B, K, 4] (sigmoid),
                      topk_indices [B, K]
        """
        src_flat, mask_flat, pos_flat, spatial_shapes, level_start_index, valid_ratios = flatten_levels(
            srcs, masks, pos_embeds, self.level_embed
        )
        memory = self.encoder(src_flat, spatial_shapes, level_start_index, valid_ratios, pos_flat, mask_flat)

        sel = self.select_queries(memory, mask_flat, spatial_shapes)
        batch = memory.shape[0]
        refpoints = sel["refpoints_unsig"].detach()
        if self.tgt_embed is not None:
            tgt = self.tgt_embed.weight[None].expand(batch, -1, -1)
        else:
            tgt = sel["tokens"].detach()
        tgt, refpoints, attn_mask = prepend_denoising(dn, tgt, refpoints)

        hs, boxes = self.decoder(tgt, refpoints, memory, mask_flat, spatial_shapes, level_start_index, valid_ratios,
                                 attn_mask)
        return {
            "hs": hs,
            "boxes": boxes,
            "interm_logits": self.enc_out_class_embed(sel["tokens"]),
            "interm_boxes": sel["refpoints_unsig"].sigmoid(),
            "init_proposals": sel["proposals_unsig"].sigmoid(),
            "topk_indices": sel["topk_indices"],
        }


__all__ = ["DINODecoder", "DINOTransformer", "INVERSE_SIGMOID_EPS"]
