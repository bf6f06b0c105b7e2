"""DINO's transformer split for prompting: encode images once, decode against any prompts.

`TRexTransformer` reuses `DINOTransformer`'s encoder, decoder and parameters unchanged, but
(1) exposes the encoder memory (`encode`), which the visual prompt encoder also reads, and
(2) scores the encoder's proposals with a caller-given function (alignment with the prompts)
instead of a fixed class head; the top-K tokens by best prompt score seed the decoder.

`build_prompt_cdn_queries`: DINO's contrastive denoising where a query's "label" is a prompt
slot of its image and its content is that prompt's embedding (projected), since prompt slots
mean different classes in different images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from edgedet.nn.deformable_transformer import encoder_output_proposals, flatten_levels
from edgedet.nn.denoising import (
    DN_INVERSE_SIGMOID_EPS,
    DenoisingQueries,
    cdn_attention_mask,
    noise_boxes_cxcywh,
    num_dn_groups,
    prepend_denoising,
)
from edgedet.nn.box_ops import inverse_sigmoid
from edgedet.nn.dino_transformer import DINOTransformer
from edgedet.nn.prompt_encoder import MASKED_LOGIT

ScoreFn = Callable[[Tensor], Tensor]  # tokens [B, n, D] -> logits [B, n, K]


@dataclass
class ImageMemory:
    """The encoder's output for a batch: memory [B, S, D], padding_mask [B, S] (True = padding),
    spatial_shapes [L, 2] (H, W), level_start_index [L], valid_ratios [B, L, 2]."""

    memory: Tensor
    padding_mask: Tensor
    spatial_shapes: Tensor
    level_start_index: Tensor
    valid_ratios: Tensor


class TRexTransformer(DINOTransformer):
    """DINOTransformer with `encode` / `decode(score_fn)`; same parameters and keys."""

    def encode(self, srcs: List[Tensor], masks: List[Tensor], pos_embeds: List[Tensor]) -> ImageMemory:
        src, mask, pos, shapes, starts, ratios = flatten_levels(srcs, masks, pos_embeds, self.level_embed)
        memory = self.encoder(src, shapes, starts, ratios, pos, mask)
        return ImageMemory(memory, mask, shapes, starts, ratios)

    def decode(self, mem: ImageMemory, score_fn: ScoreFn, dn: Optional[DenoisingQueries] = None) -> Dict[str, object]:
        """Query selection by `score_fn` + decoder. Returns the keys of `DINOTransformer.forward`."""
        if self.enc_out_bbox_embed is None:
            raise RuntimeError("TRexTransformer.enc_out_bbox_embed is not set; the detector attaches it")
        num_tokens = mem.memory.shape[1]
        if num_tokens < self.num_queries:
            raise ValueError(f"the encoder has {num_tokens} tokens but num_queries is {self.num_queries}; "
                             "use larger images or fewer queries")
        output_memory, proposals = encoder_output_proposals(mem.memory, mem.padding_mask, mem.spatial_shapes)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        # Class-agnostic objectness = best alignment with any prompt; padding / border tokens never win.
        scores = score_fn(output_memory).max(-1)[0]
        scores = scores.masked_fill(torch.isinf(proposals).any(-1), 2 * MASKED_LOGIT)
        coords_unsig = self.enc_out_bbox_embed(output_memory) + proposals
        topk = torch.topk(scores, self.num_queries, dim=1)[1]

        def take(x: Tensor) -> Tensor:
            return torch.gather(x, 1, topk[..., None].expand(-1, -1, x.shape[-1]))

        tokens, refpoints_unsig, raw = take(output_memory), take(coords_unsig), take(proposals)
        batch = mem.memory.shape[0]
        refpoints = refpoints_unsig.detach()
        tgt = self.tgt_embed.weight[None].expand(batch, -1, -1) if self.tgt_embed is not None else tokens.detach()
        tgt, refpoints, attn_mask = prepend_denoising(dn, tgt, refpoints)
        hs, boxes = self.decoder(tgt, refpoints, mem.memory, mem.padding_mask, mem.spatial_shapes,
                                 mem.level_start_index, mem.valid_ratios, attn_mask)
        return {"hs": hs, "boxes": boxes, "interm_logits": score_fn(tokens), "interm_boxes": refpoints_unsig.sigmoid(),
                "init_proposals": raw.sigmoid(), "topk_indices": topk}


def build_prompt_cdn_queries(targets: Sequence[Dict[str, Tensor]], prompt_content: Tensor, prompt_mask: Tensor,
                             num_queries: int, dn_number: int, label_noise_ratio: float,
                             box_noise_scale: float) -> Optional[DenoisingQueries]:
    """Contrastive denoising queries whose labels are prompt slots; None when there is no box.

    targets: per image `labels` [n] (prompt slot indices) and `boxes` [n, 4] cxcywh;
    prompt_content [B, K, D] (the decoder-width content of each prompt); prompt_mask [B, K] True = valid.
    Layout and attention mask as `edgedet.nn.denoising.build_cdn_queries`.
    """
    device = prompt_content.device
    counts = [int(t["labels"].numel()) for t in targets]
    max_gt = max(counts) if counts else 0
    if dn_number <= 0 or max_gt == 0:
        return None
    groups = num_dn_groups(dn_number, max_gt)
    pad_size = 2 * max_gt * groups
    batch, _, dim = prompt_content.shape
    labels = torch.cat([t["labels"] for t in targets]).to(device=device, dtype=torch.int64)
    boxes = torch.cat([t["boxes"] for t in targets]).to(device=device, dtype=prompt_content.dtype)
    image_idx = torch.cat([torch.full((n,), i, dtype=torch.int64, device=device) for i, n in enumerate(counts)])
    slot = torch.cat([torch.arange(n, device=device) for n in counts])
    total = labels.numel()

    blocks = torch.arange(2 * groups, device=device).repeat_interleave(total)
    known_image = image_idx.repeat(2 * groups)
    known_labels = labels.repeat(2 * groups)
    if label_noise_ratio > 0:
        # A flipped label becomes a random valid prompt slot of the same image.
        flip = torch.rand(known_labels.shape, device=device) < label_noise_ratio * 0.5
        weights = prompt_mask.to(prompt_content.dtype)[known_image] + 1e-6
        random_slots = torch.multinomial(weights, 1).squeeze(1)
        known_labels = torch.where(flip, random_slots, known_labels)
    known_boxes = noise_boxes_cxcywh(boxes.repeat(2 * groups, 1), blocks % 2 == 1, box_noise_scale)
    known_slot = slot.repeat(2 * groups) + blocks * max_gt

    query_label = prompt_content.new_zeros(batch, pad_size, dim)
    query_bbox = prompt_content.new_zeros(batch, pad_size, 4)
    query_label = query_label.index_put((known_image, known_slot), prompt_content[known_image, known_labels])
    query_bbox[known_image, known_slot] = inverse_sigmoid(known_boxes, DN_INVERSE_SIGMOID_EPS)
    attn_mask = cdn_attention_mask(pad_size, groups, num_queries, device)
    return DenoisingQueries(query_label, query_bbox, attn_mask, {"pad_size": pad_size, "num_dn_group": groups})


__all__ = ["ImageMemory", "TRexTransformer", "build_prompt_cdn_queries"]
