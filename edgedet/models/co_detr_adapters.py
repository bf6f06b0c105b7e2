"""How Co-DETR drives each base family's encoder and decoder during training.

An adapter splits the base detector's forward in two: `encode` (backbone, input projections,
encoder -> `Encoded`) and `decode` (the family's queries, plus the auxiliary query groups
appended after them and kept apart by `group_attention_mask`, through the base decoder and
heads). It reuses the base modules and weights; the base files are not changed. Registered in
`CO_ADAPTERS` under the base family's model name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from edgedet.nn.box_ops import inverse_sigmoid
from edgedet.nn.co_heads.positive_queries import QueryGroup, group_attention_mask
from edgedet.nn.deformable_transformer import flatten_levels
from edgedet.nn.denoising import build_cdn_queries, prepend_denoising, split_dn
from edgedet.registry import Registry

CO_ADAPTERS = Registry("Co-DETR base family")


@dataclass
class Encoded:
    """Encoder output: memory [B, S, D], padding mask [B, S], level layout (see deformable_transformer)."""

    memory: Tensor
    mask_flat: Tensor
    spatial_shapes: Tensor
    level_start_index: Tensor
    valid_ratios: Tensor

    @property
    def shapes_hw(self) -> List[Tuple[int, int]]:
        return [(int(h), int(w)) for h, w in self.spatial_shapes.tolist()]


def _encode(transformer: nn.Module, srcs, masks, pos) -> Encoded:
    src, mask, pos_flat, shapes, lsi, ratios = flatten_levels(srcs, masks, pos, transformer.level_embed)
    memory = transformer.encoder(src, shapes, lsi, ratios, pos_flat, mask)
    return Encoded(memory, mask, shapes, lsi, ratios)


def _split(per_layer: Sequence[Tensor], base: int, sizes: Sequence[int]) -> Tuple[List[Tensor], List[List[Tensor]]]:
    """Per-layer [B, base + sum(sizes), *] -> (per-layer base part, per group per-layer parts)."""
    main = [x[:, :base] for x in per_layer]
    groups, start = [], base
    for g in sizes:
        groups.append([x[:, start : start + g] for x in per_layer])
        start += g
    return main, groups


def _layer_dict(logits: Sequence[Tensor], boxes: Sequence[Tensor], aux_loss: bool) -> Dict:
    out: Dict = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
    out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])] if aux_loss else []
    return out


def _group_outputs(groups: Sequence[QueryGroup], logits: List[List[Tensor]], boxes: List[List[Tensor]],
                   aux_loss: bool) -> List[Dict]:
    """Per group its predictions (last layer + aux_outputs) and its fixed targets."""
    out = []
    for g, lg, bx in zip(groups, logits, boxes):
        d = _layer_dict(lg, bx, aux_loss)
        d["targets"] = {"labels": g.labels, "boxes": g.target_boxes_cxcywh, "valid": g.valid}
        out.append(d)
    return out


# ---------------------------------------------------------------- DINO


@CO_ADAPTERS.register("dino")
class DINOAdapter:
    """DINO: denoising queries first, then the K selected queries, then the auxiliary groups."""

    needs_query_pos = False  # DINO's decoder derives query positions from the reference boxes

    @staticmethod
    def encode(model: nn.Module, images: Tensor, mask: Tensor) -> Encoded:
        srcs, masks, pos = model.multiscale_features(images, mask)
        return _encode(model.transformer, srcs, masks, pos)

    @staticmethod
    def decode(model: nn.Module, enc: Encoded, targets: Sequence[Dict[str, Tensor]],
               groups: Sequence[QueryGroup]) -> Tuple[Dict, List[Dict]]:
        cfg, t = model.config, model.transformer
        batch = enc.memory.shape[0]
        dn = None
        if cfg.dn_number > 0:
            dn = build_cdn_queries(targets, model.label_enc, cfg.num_queries, cfg.num_classes, cfg.dn_number,
                                   cfg.dn_label_noise_ratio, cfg.dn_box_noise_scale)
        sel = t.select_queries(enc.memory, enc.mask_flat, enc.spatial_shapes)
        refpoints = sel["refpoints_unsig"].detach()
        tgt = t.tgt_embed.weight[None].expand(batch, -1, -1) if t.tgt_embed is not None else sel["tokens"].detach()
        tgt, refpoints, base_mask = prepend_denoising(dn, tgt, refpoints)
        base, sizes = tgt.shape[1], [g.content.shape[1] for g in groups]
        attn_mask = base_mask
        if groups:
            tgt = torch.cat([tgt] + [g.content for g in groups], 1)
            refpoints = torch.cat([refpoints] + [g.refpoints_unsig.to(refpoints) for g in groups], 1)
            attn_mask = group_attention_mask(base, sizes, base_mask, tgt.device)
        hs, boxes = t.decoder(tgt, refpoints, enc.memory, enc.mask_flat, enc.spatial_shapes, enc.level_start_index,
                              enc.valid_ratios, attn_mask)
        hs = list(hs)
        hs[0] = hs[0] + model.label_enc.weight[0, 0] * 0.0  # as DINO: label_enc stays in the graph
        logits = [head(h) for head, h in zip(model.class_embed, hs)]
        logits, group_logits = _split(logits, base, sizes)
        boxes, group_boxes = _split(boxes, base, sizes)
        dn_meta = dn.dn_meta if dn is not None else {"pad_size": 0, "num_dn_group": 0}
        if dn is not None:
            dn_logits, logits = zip(*(split_dn(x, dn_meta) for x in logits))
            dn_boxes, boxes = zip(*(split_dn(x, dn_meta) for x in boxes))
        out = _layer_dict(logits, boxes, cfg.aux_loss)
        out["interm_outputs"] = {"pred_logits": t.enc_out_class_embed(sel["tokens"]),
                                 "pred_boxes": sel["refpoints_unsig"].sigmoid()}
        out["interm_outputs_for_matching_pre"] = {"pred_logits": out["interm_outputs"]["pred_logits"],
                                                  "pred_boxes": sel["proposals_unsig"].sigmoid()}
        if cfg.dn_number > 0:
            out["dn_meta"] = dn_meta
            if dn is not None:
                out["dn_outputs"] = _layer_dict(dn_logits, dn_boxes, cfg.aux_loss)
        return out, _group_outputs(groups, group_logits, group_boxes, cfg.aux_loss)


# ---------------------------------------------------------------- Deformable DETR (two-stage, box refinement)


@CO_ADAPTERS.register("deformable_detr")
class DeformableDETRAdapter:
    """Two-stage Deformable DETR with box refinement (Deformable-DETR++, the paper's baseline)."""

    needs_query_pos = True

    @staticmethod
    def encode(model: nn.Module, images: Tensor, mask: Tensor) -> Encoded:
        srcs, masks, pos = model.multi_scale_features(images, mask)
        return _encode(model.transformer, srcs, masks, pos)

    @staticmethod
    def decode(model: nn.Module, enc: Encoded, targets: Sequence[Dict[str, Tensor]],
               groups: Sequence[QueryGroup]) -> Tuple[Dict, List[Dict]]:
        cfg, t = model.config, model.transformer
        tgt, query_pos, reference, enc_class, enc_coord_unact = t._select_proposals(enc.memory, enc.mask_flat,
                                                                                    enc.spatial_shapes)
        base, sizes = tgt.shape[1], [g.content.shape[1] for g in groups]
        attn_mask = None
        if groups:
            tgt = torch.cat([tgt] + [g.content for g in groups], 1)
            query_pos = torch.cat([query_pos] + [g.query_pos for g in groups], 1)
            reference = torch.cat([reference] + [g.boxes_cxcywh.to(reference) for g in groups], 1)
            attn_mask = group_attention_mask(base, sizes, None, tgt.device)
        if t.decoder.bbox_embed is None or reference.shape[-1] != 4:
            raise ValueError("Co-DETR's Deformable DETR decoder needs box refinement and 4-d reference boxes")
        hs, inter = t.decoder(tgt, reference, enc.memory, enc.spatial_shapes, enc.level_start_index,
                              enc.valid_ratios, query_pos, enc.mask_flat, self_attn_mask=attn_mask)
        logits, boxes = [], []
        for lvl in range(hs.shape[0]):
            ref = inverse_sigmoid(reference if lvl == 0 else inter[lvl - 1])
            logits.append(model.class_embed[lvl](hs[lvl]))
            boxes.append((model.bbox_embed[lvl](hs[lvl]) + ref).sigmoid())
        logits, group_logits = _split(logits, base, sizes)
        boxes, group_boxes = _split(boxes, base, sizes)
        out = _layer_dict(logits, boxes, cfg.aux_loss)
        out["enc_outputs"] = {"pred_logits": enc_class, "pred_boxes": enc_coord_unact.sigmoid()}
        return out, _group_outputs(groups, group_logits, group_boxes, cfg.aux_loss)


__all__ = ["CO_ADAPTERS", "Encoded", "DINOAdapter", "DeformableDETRAdapter"]
