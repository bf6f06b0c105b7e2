"""D-FINE's decoder: Fine-grained Distribution Refinement (FDR).

Every layer predicts, per box edge, a distribution over `reg_max + 1` bins; the expected value
under the non-uniform weighting function W(n) is the edge's distance from the initial box (set
once by layer 0), and each layer adds its logits to the previous layer's. Around the usual
self-attention / deformable cross-attention / FFN, D-FINE adds a gated fusion (instead of
add & norm after cross-attention) and a localization-quality term (LQE) added to class logits.

Module and parameter names follow Peterande/D-FINE `src/zoo/dfine/dfine_decoder.py`
(`layers.0.cross_attn.sampling_offsets`, `layers.0.gateway.gate`, `lqe_layers.0.reg_conf.layers.0`).
Cross-attention is RT-DETRv2's (`edgedet.nn.rtdetr_decoder.MSDeformableAttentionV2`: per-level point
counts, offsets scaled by the reference box size and 1/points, one softmax over all points of a
head) without its value/output projections.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.nn.box_ops import inverse_sigmoid
from edgedet.nn.mlp import MLP
from edgedet.nn.rtdetr_decoder import MSDeformableAttentionV2
from edgedet.ops.msda import multi_scale_deformable_attention


def weighting_function(reg_max: int, up: Tensor, reg_scale: Tensor) -> Tensor:
    """W(n), the bin values [reg_max + 1], in float32 torch ops as the training graph does.

    a = |up| * |reg_scale|, step = (a + 1) ** (2 / (reg_max - 2));
    W = [-2a, 1 - step^(reg_max/2 - 1), ..., 1 - step, 0, step - 1, ..., step^(reg_max/2 - 1) - 1, 2a].
    """
    ub1 = up[0].abs() * reg_scale.abs()
    ub2 = ub1 * 2
    step = (ub1 + 1) ** (2 / (reg_max - 2))
    left = [-(step ** i) + 1 for i in range(reg_max // 2 - 1, 0, -1)]
    right = [step ** i - 1 for i in range(1, reg_max // 2)]
    return torch.cat([-ub2] + left + [torch.zeros_like(up[0][None])] + right + [ub2], 0)


def weighting_function_constant(reg_max: int, up: float, reg_scale: float) -> Tensor:
    """W(n) computed once with Python floats, as the official deploy mode precomputes it."""
    ub1 = abs(up) * abs(reg_scale)
    step = (ub1 + 1) ** (2 / (reg_max - 2))
    left = [-(step ** i) + 1 for i in range(reg_max // 2 - 1, 0, -1)]
    right = [step ** i - 1 for i in range(1, reg_max // 2)]
    return torch.tensor([-2 * ub1] + left + [0.0] + right + [2 * ub1], dtype=torch.float32)


def distance2bbox(points: Tensor, distance: Tensor, reg_scale: Tensor) -> Tensor:
    """Reference boxes (cx, cy, w, h) + edge distances (l, t, r, b) in units of w/reg_scale,
    h/reg_scale, offset by half a box -> boxes (cx, cy, w, h)."""
    rs = reg_scale.abs()
    half = 0.5 * rs
    x1 = points[..., 0] - (half + distance[..., 0]) * (points[..., 2] / rs)
    y1 = points[..., 1] - (half + distance[..., 1]) * (points[..., 3] / rs)
    x2 = points[..., 0] + (half + distance[..., 2]) * (points[..., 2] / rs)
    y2 = points[..., 1] + (half + distance[..., 3]) * (points[..., 3] / rs)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def integral(corners: Tensor, project: Tensor, reg_max: int) -> Tensor:
    """[..., 4 * (reg_max + 1)] edge logits -> [..., 4] expected distances sum(softmax * W)."""
    shape = corners.shape
    prob = F.softmax(corners.reshape(-1, reg_max + 1), dim=1)
    return F.linear(prob, project.to(prob)).reshape(list(shape[:-1]) + [4])


class LQE(nn.Module):
    """Localization-quality estimate from each edge's top-k probabilities and their mean."""

    def __init__(self, k: int, hidden_dim: int, num_layers: int, reg_max: int, act: str = "relu"):
        super().__init__()
        self.k, self.reg_max = k, reg_max
        self.reg_conf = MLP(4 * (k + 1), hidden_dim, 1, num_layers, act=act)
        nn.init.zeros_(self.reg_conf.layers[-1].weight)
        nn.init.zeros_(self.reg_conf.layers[-1].bias)

    def forward(self, scores: Tensor, corners: Tensor) -> Tensor:
        b, q, _ = corners.shape
        prob = F.softmax(corners.reshape(b, q, 4, self.reg_max + 1), dim=-1)
        top, _ = prob.topk(self.k, dim=-1)
        stat = torch.cat([top, top.mean(dim=-1, keepdim=True)], dim=-1)
        return scores + self.reg_conf(stat.reshape(b, q, -1))


class Gate(nn.Module):
    """norm(g1 * x + g2 * attn), [g1, g2] = sigmoid(Linear(cat[x, attn])); starts at g = 0.5."""

    def __init__(self, d_model: int):
        super().__init__()
        self.gate = nn.Linear(2 * d_model, 2 * d_model)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, 0.0)  # logit(0.5)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, attn: Tensor) -> Tensor:
        g1, g2 = torch.sigmoid(self.gate(torch.cat([x, attn], dim=-1))).chunk(2, dim=-1)
        return self.norm(g1 * x + g2 * attn)


class DFineDeformableAttention(MSDeformableAttentionV2):
    """RT-DETRv2's deformable cross-attention without value/output projections (D-FINE drops them):
    the encoder memory is sampled directly, heads = channel groups."""

    def __init__(self, d_model: int, n_heads: int, num_points: Sequence[int], method: str = "default",
                 msda_impl: str = "pytorch"):
        super().__init__(d_model, n_heads, len(num_points), list(num_points), method=method, msda_impl=msda_impl)
        del self.value_proj, self.output_proj
        self.impl = msda_impl  # MSDA implementation name (converters switch it for export)

    def forward(self, query: Tensor, reference: Tensor, value: Tensor, shapes: Sequence[Tuple[int, int]],
                record: Optional[Dict[str, Tensor]] = None) -> Tensor:
        """value: [B, S, heads, D / heads] (the memory split into heads once per forward)."""
        locations, weights = self.sampling(query, reference, shapes)
        if record is not None:
            record.update({"sampling_locations": locations, "attention_weights": weights})
        return multi_scale_deformable_attention(value, shapes, locations, weights, impl=self.impl,
                                                num_points_per_level=tuple(self.num_points_list), method=self.method)


class DFineDecoderLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dim_ff: int, num_points: Sequence[int], dropout: float = 0.0,
                 msda_impl: str = "pytorch", activation: str = "relu", cross_attn_method: str = "default"):
        super().__init__()
        if activation not in ("relu", "silu"):
            raise ValueError(f"decoder activation must be relu (D-FINE) or silu (DEIM), got '{activation}'")
        self.activation = F.relu if activation == "relu" else F.silu
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = DFineDeformableAttention(d_model, n_heads, num_points, cross_attn_method, msda_impl)
        self.dropout2 = nn.Dropout(dropout)
        self.gateway = Gate(d_model)
        self.linear1 = nn.Linear(d_model, dim_ff)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_ff, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, tgt: Tensor, ref_boxes: Tensor, value: Tensor, shapes, attn_mask: Optional[Tensor], pos: Tensor,
                record: Optional[Dict[str, Tensor]] = None) -> Tensor:
        q = k = tgt + pos
        sa, _ = self.self_attn(q, k, value=tgt, attn_mask=attn_mask, need_weights=False)
        tgt = self.norm1(tgt + self.dropout1(sa))
        ca = self.cross_attn(tgt + pos, ref_boxes, value, shapes, record)
        tgt = self.gateway(tgt, self.dropout2(ca))
        tgt = tgt + self.dropout4(self.linear2(self.dropout3(self.activation(self.linear1(tgt)))))
        # the clamp keeps FP16 finite before the last LayerNorm (official)
        return self.norm3(tgt.clamp(min=-65504, max=65504))


class FDRDecoder(nn.Module):
    """The layer stack and the FDR loop (official `TransformerDecoder`; `up`/`reg_scale` are the
    parent's Parameters registered here too, as the official state_dict has them twice)."""

    def __init__(self, layer_args: Dict, num_layers: int, eval_idx: int, reg_max: int, up: nn.Parameter,
                 reg_scale: nn.Parameter):
        super().__init__()
        self.num_layers, self.reg_max = num_layers, reg_max
        self.eval_idx = eval_idx if eval_idx >= 0 else num_layers + eval_idx
        self.up, self.reg_scale = up, reg_scale
        self.layers = nn.ModuleList(DFineDecoderLayer(**layer_args) for _ in range(num_layers))
        # DEIM runs the LQE MLP with the decoder's activation
        self.lqe_layers = nn.ModuleList(LQE(4, 64, 2, reg_max, layer_args.get("activation", "relu")) for _ in range(num_layers))

    def project(self) -> Tensor:
        if hasattr(self, "project_const"):
            return self.project_const
        return weighting_function(self.reg_max, self.up, self.reg_scale)

    def deploy(self) -> None:
        """Precompute W(n); drop the layers after eval_idx and the LQE heads before it."""
        self.register_buffer("project_const", weighting_function_constant(self.reg_max, float(self.up[0]), float(self.reg_scale[0])),
                             persistent=False)
        self.layers = self.layers[: self.eval_idx + 1]
        self.lqe_layers = nn.ModuleList([nn.Identity()] * self.eval_idx + [self.lqe_layers[self.eval_idx]])

    def forward(self, target: Tensor, ref_unact: Tensor, value: Tensor, shapes, heads: nn.Module,
                attn_mask: Optional[Tensor] = None, record: Optional[Dict[str, Tensor]] = None) -> Dict[str, List[Tensor]]:
        """-> lists over the layers that produce outputs: boxes, logits, corners, refs; plus pre_boxes/pre_logits.

        `heads` is the parent module holding query_pos_head, pre_bbox_head, dec_bbox_head and dec_score_head
        (official layout: they live on DFINETransformer, not on the decoder). In eval mode the loop stops
        after eval_idx and returns that layer only (official behaviour).
        `record` (a dict) receives per-layer intermediates for debugging/parity.
        """
        project = self.project()
        output, output_detach, corners_prev = target, 0, 0
        ref_detach = torch.sigmoid(ref_unact)
        outs: Dict[str, List[Tensor]] = {"boxes": [], "logits": [], "corners": [], "refs": []}
        for i, layer in enumerate(self.layers):
            pos = heads.query_pos_head(ref_detach).clamp(min=-10, max=10)
            layer_record = {} if record is not None else None
            output = layer(output, ref_detach.unsqueeze(2), value, shapes, attn_mask, pos, layer_record)
            if record is not None:
                record.update({f"layers.{i}.{k}": v for k, v in layer_record.items()})
            if i == 0:
                pre_out = heads.pre_bbox_head(output)
                pre_boxes = torch.sigmoid(pre_out + inverse_sigmoid(ref_detach))
                ref_initial = pre_boxes.detach()
                if record is not None:
                    record.update({"pre_bbox_head_out": pre_out, "ref_points_initial": ref_initial})
                if self.training:
                    outs["pre_logits"] = [heads.dec_score_head[0](output)]
                outs["pre_boxes"] = [pre_boxes]
            corners = heads.dec_bbox_head[i](output + output_detach) + corners_prev
            distances = integral(corners, project, self.reg_max)
            boxes = distance2bbox(ref_initial, distances, self.reg_scale)
            if record is not None:
                record.update({f"layers.{i}.output": output, f"layers.{i}.pred_corners": corners,
                               f"layers.{i}.distances": distances, f"layers.{i}.boxes": boxes})
            if self.training or i == self.eval_idx:
                logits = heads.dec_score_head[i](output)
                if record is not None:
                    record["eval_layer_logits_before_lqe"] = logits
                outs["logits"].append(self.lqe_layers[i](logits, corners))
                outs["boxes"].append(boxes)
                outs["corners"].append(corners)
                outs["refs"].append(ref_initial)
                if not self.training:
                    break
            corners_prev = corners
            ref_detach = boxes.detach()
            output_detach = output.detach()
        return outs
