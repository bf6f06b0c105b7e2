"""RF-DETR's transformer (LW-DETR's): two-stage query selection and the deformable decoder.

No encoder: the projector's maps are the memory. Names equal the official `Transformer`
(`enc_output.{g}`, `enc_output_norm.{g}`, `enc_out_class_embed.{g}`, `enc_out_bbox_embed.{g}` per
group, `decoder.layers.{i}.{self_attn, norm1, cross_attn, linear1, linear2, norm2, norm3}`,
`decoder.norm`, `decoder.ref_point_head`).

- Proposals: token (x, y) of a level with h x w tokens -> ((x + .5) / w, (y + .5) / h, .05 * 2^level,
  same), in box space (bbox_reparam: no logit). Tokens with a coordinate outside (0.01, 0.99) or under
  padding are zeroed and get a zero proposal.
- Per group g (one at eval): scores = max over classes of enc_out_class_embed.g(LN(enc_output.g(memory)));
  top-Q tokens (descending) fix the query order; boxes = delta applied to the proposals:
  (d_xy * p_wh + p_xy, exp(d_wh) * p_wh).
- Decoder queries: content = the learned `query_feat`; reference = the learned `refpoint_embed` applied
  as a delta on the selected boxes. With lite_refpoint_refine the reference is fixed across layers and
  the query position embedding (ref_point_head of the (cy, cx, w, h) sine embedding) is computed once.
- Decoder layer (post-norm): self-attention (within each group while training), MSDA (Deformable
  DETR's form, 4-value reference boxes), FFN.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.nn.deformable_transformer import get_valid_ratios
from edgedet.nn.mlp import MLP
from edgedet.nn.ms_deform_attn import MSDeformAttn


def sine_embed(boxes: Tensor, dim: int = 128) -> Tensor:
    """[..., 4] (cx, cy, w, h) -> [..., 4 * dim] in the order (cy, cx, w, h), sin/cos interleaved."""
    i = torch.arange(dim, dtype=boxes.dtype, device=boxes.device)
    dim_t = 10000 ** (2 * torch.div(i, 2, rounding_mode="floor") / dim)

    def one(v: Tensor) -> Tensor:
        p = (v * 2 * math.pi)[..., None] / dim_t
        return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), -1).flatten(-2)

    return torch.cat([one(boxes[..., 1]), one(boxes[..., 0]), one(boxes[..., 2]), one(boxes[..., 3])], -1)


def apply_box_delta(delta: Tensor, boxes: Tensor) -> Tensor:
    """RF-DETR's box reparameterisation: (d_xy * b_wh + b_xy, exp(d_wh) * b_wh)."""
    return torch.cat([delta[..., :2] * boxes[..., 2:] + boxes[..., :2], delta[..., 2:].exp() * boxes[..., 2:]], -1)


def encoder_proposals(memory: Tensor, shapes: List[Tuple[int, int]], mask: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """-> (memory with invalid tokens zeroed, proposals [B, S, 4] cxcywh (zero where invalid))."""
    b = memory.shape[0]
    props, start = [], 0
    for lvl, (h, w) in enumerate(shapes):
        gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=memory.device),
                                torch.arange(w, dtype=torch.float32, device=memory.device), indexing="ij")
        grid = torch.stack([gx, gy], -1).unsqueeze(0)  # 1, h, w, 2
        if mask is not None:
            m = mask[:, start:start + h * w].reshape(b, h, w)
            valid_h = (~m[:, :, 0]).sum(1).float()
            valid_w = (~m[:, 0, :]).sum(1).float()
            scale = torch.stack([valid_w, valid_h], -1).view(b, 1, 1, 2)
        else:
            scale = torch.tensor([float(w), float(h)], device=memory.device).view(1, 1, 1, 2)
        xy = (grid + 0.5) / scale
        wh = torch.ones_like(xy) * (0.05 * 2.0 ** lvl)
        props.append(torch.cat([xy, wh], -1).reshape(xy.shape[0], h * w, 4).expand(b, -1, -1))
        start += h * w
    proposals = props[0] if len(props) == 1 else torch.cat(props, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    if mask is not None:
        valid = valid & ~mask.unsqueeze(-1)
    proposals = proposals.masked_fill(~valid, 0.0)
    memory = memory.masked_fill(~valid, 0.0)
    return memory, proposals.to(memory.dtype)


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, sa_heads: int, ca_heads: int, dim_ff: int, dropout: float, n_levels: int,
                 n_points: int, msda_impl: str):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, sa_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformAttn(d_model, n_levels, ca_heads, n_points, impl=msda_impl)
        self.linear1 = nn.Linear(d_model, dim_ff)
        self.linear2 = nn.Linear(dim_ff, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, tgt: Tensor, query_pos: Tensor, refs: Tensor, memory: Tensor, shapes: List[Tuple[int, int]],
                memory_mask: Optional[Tensor], groups: int) -> Tensor:
        b, nq, c = tgt.shape
        q = tgt + query_pos
        v = tgt
        if groups > 1:  # group DETR: queries attend only within their group
            q = torch.cat(q.split(nq // groups, 1), 0)
            v = torch.cat(v.split(nq // groups, 1), 0)
        out = self.self_attn(q, q, v, need_weights=False)[0]
        if groups > 1:
            out = torch.cat(out.split(b, 0), 1)
        tgt = self.norm1(tgt + self.dropout1(out))
        tgt = self.norm2(tgt + self.dropout2(self.cross_attn(tgt + query_pos, refs, memory, shapes, padding_mask=memory_mask)))
        return self.norm3(tgt + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))


class Decoder(nn.Module):
    def __init__(self, layer: DecoderLayer, num_layers: int, d_model: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.d_model = d_model


class RFDETRTransformer(nn.Module):
    def __init__(self, d_model: int, sa_heads: int, ca_heads: int, num_queries: int, dec_layers: int, dim_ff: int,
                 dropout: float, group_detr: int, n_levels: int, n_points: int, num_classes: int, msda_impl: str):
        super().__init__()
        layer = DecoderLayer(d_model, sa_heads, ca_heads, dim_ff, dropout, n_levels, n_points, msda_impl)
        self.decoder = Decoder(layer, dec_layers, d_model)
        self.enc_output = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(group_detr))
        self.enc_output_norm = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(group_detr))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        # heads are copies of the detector's class / box heads (set by the model, like the official build)
        self.enc_out_class_embed = nn.ModuleList(nn.Linear(d_model, num_classes) for _ in range(group_detr))
        self.enc_out_bbox_embed = nn.ModuleList(MLP(d_model, d_model, 4, 3) for _ in range(group_detr))
        self.d_model, self.num_queries, self.group_detr = d_model, num_queries, group_detr

    def select(self, memory: Tensor, shapes: List[Tuple[int, int]], mask: Optional[Tensor], groups: int,
               record: Optional[Dict]) -> Tuple[Tensor, Tensor, Tensor]:
        """Two-stage selection for `groups` groups -> (boxes_ts [B, G*k, 4], memory_ts [B, G*k, d], enc logits)."""
        out_memory, proposals = encoder_proposals(memory, shapes, mask)
        boxes, feats, logits = [], [], []
        for g in range(groups):
            pre = self.enc_output[g](out_memory)
            scores = self.enc_out_class_embed[g](self.enc_output_norm[g](pre))
            k = min(self.num_queries, scores.shape[1])
            idx = torch.topk(scores.max(-1).values, k, dim=1).indices
            # LayerNorm is per token: normalising the gathered pre-norm rows equals gathering normalised rows
            sel = self.enc_output_norm[g](torch.gather(pre, 1, idx.unsqueeze(-1).expand(-1, -1, self.d_model)))
            props = torch.gather(proposals, 1, idx.unsqueeze(-1).expand(-1, -1, 4))
            delta = self.enc_out_bbox_embed[g](sel)
            box = apply_box_delta(delta, props)
            cls = self.enc_out_class_embed[g](sel)
            if record is not None and g == 0:
                record.update({"two_stage.proposals": proposals, "two_stage.enc_logits_all": scores,
                               "two_stage.topk_indices": idx, "two_stage.memory_selected": sel,
                               "two_stage.enc_bbox_delta": delta, "two_stage.boxes_selected": box})
            boxes.append(box)
            feats.append(sel)
            logits.append(cls)
        if groups == 1:
            return boxes[0], feats[0], logits[0]
        return torch.cat(boxes, 1), torch.cat(feats, 1), torch.cat(logits, 1)

    def forward(self, srcs: List[Tensor], masks: Optional[List[Tensor]], refpoint_embed: Tensor, query_feat: Tensor,
                groups: int, record: Optional[Dict] = None) -> Dict[str, Tensor]:
        shapes = [(int(s.shape[2]), int(s.shape[3])) for s in srcs]
        memory = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        mask = torch.cat([m.flatten(1) for m in masks], 1) if masks is not None else None
        b = memory.shape[0]
        boxes_ts, memory_ts, enc_logits = self.select(memory, shapes, mask, groups, record)
        refpoint = refpoint_embed.unsqueeze(0).expand(b, -1, -1)
        ts_len = boxes_ts.shape[1]
        head = apply_box_delta(refpoint[:, :ts_len], boxes_ts.detach())
        refs = head if refpoint.shape[1] == ts_len else torch.cat([head, refpoint[:, ts_len:]], 1)
        tgt = query_feat.unsqueeze(0).expand(b, -1, -1)
        if masks is not None:
            ratios = torch.stack([get_valid_ratios(m) for m in masks], 1)  # B, L, 2 (w, h)
            refs_in = refs[:, :, None] * torch.cat([ratios, ratios], -1)[:, None]
        else:
            refs_in = refs[:, :, None]
        query_pos = self.decoder.ref_point_head(sine_embed(refs_in[:, :, 0], self.d_model // 2))
        if record is not None:
            record.update({"decoder.reference_boxes": refs.unsqueeze(0), "decoder.query_pos": query_pos})
        hs = []
        for i, layer in enumerate(self.decoder.layers):
            tgt = layer(tgt, query_pos, refs_in, memory, shapes, mask, groups)
            if record is not None:
                record[f"decoder.layers.{i}.output"] = tgt
            hs.append(self.decoder.norm(tgt))
        return {"hs": torch.stack(hs), "refs": refs, "boxes_ts": boxes_ts, "memory_ts": memory_ts, "enc_logits": enc_logits}


__all__ = ["RFDETRTransformer", "sine_embed", "apply_box_delta", "encoder_proposals"]
