"""Losses of the prompted detector (`trex`): DINO's set losses over prompt slots + alignment.

Labels are prompt-slot indices of each image (a negative prompt, a class absent from the
image, simply has no target, so its column is trained towards 0 everywhere). Matching, focal,
L1, GIoU, denoising and encoder-proposal losses are `DINOCriterion`'s with K = max_prompts
columns. On top, `loss_align` pulls each visual prompt embedding towards the text embedding of
its class and away from the other classes' (InfoNCE with temperature τ), so the two prompt
types share one embedding space; the model reports them as outputs["prompt_align"] =
{"visual": [M, Dp], "labels": [M] (row of "text"), "text": [C, Dp]}.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch.nn.functional as F
from torch import Tensor

from edgedet.losses.dn_criterion import DINOCriterion, dino_weight_dict
from edgedet.losses.matcher import HungarianMatcher


def alignment_loss(visual: Tensor, labels: Tensor, text: Tensor, temperature: float = 0.1) -> Tensor:
    """InfoNCE: visual [M, Dp] should match text[labels] [M] among all text rows [C, Dp]. Scalar (0 if M == 0)."""
    if visual.numel() == 0 or text.numel() == 0:
        return visual.sum() * 0.0 + text.sum() * 0.0
    logits = F.normalize(visual, dim=-1) @ F.normalize(text, dim=-1).t() / temperature
    return F.cross_entropy(logits.float(), labels.to(logits.device))


class PromptCriterion(DINOCriterion):
    """DINOCriterion over prompt slots plus `loss_align` when outputs carry "prompt_align"."""

    def __init__(self, max_prompts: int, matcher, weight_dict: Dict[str, float], focal_alpha: float = 0.25,
                 temperature: float = 0.1):
        super().__init__(max_prompts, matcher, weight_dict, focal_alpha=focal_alpha)
        self.temperature = temperature

    def _target_classes(self, logits: Tensor, targets: Sequence[Dict], indices) -> Tensor:
        """As SetCriterion's, but "no object" is column K of whatever prompt width the model scored
        (max_prompts for sampled prompts, num_classes for the default prompts)."""
        self.num_classes = logits.shape[-1]
        return super()._target_classes(logits, targets, indices)

    def forward(self, outputs: Dict, targets: Sequence[Dict]) -> Dict[str, Tensor]:
        # A task the model sampled itself (engine training): its slot targets replace the dataset's.
        targets = outputs.get("prompt_targets", targets)
        k = outputs["pred_logits"].shape[-1]
        for t in targets:
            if t["labels"].numel() and int(t["labels"].max()) >= k:
                raise ValueError(f"target label {int(t['labels'].max())} is not a prompt slot (the model scored {k} prompts); "
                                 "labels must index the image's prompts")
        losses = super().forward(outputs, targets)
        align = outputs.get("prompt_align")
        if align is not None:
            losses["loss_align"] = alignment_loss(align["visual"], align["labels"], align["text"], self.temperature)
        return losses


def build_prompt_criterion(cfg) -> PromptCriterion:
    """Matcher + weights from a `TRexConfig`."""
    matcher = HungarianMatcher(cost_class=cfg.set_cost_class, cost_bbox=cfg.set_cost_bbox, cost_giou=cfg.set_cost_giou,
                               focal=True, focal_alpha=cfg.focal_alpha)
    weights = dino_weight_dict(cfg.cls_loss_coef, cfg.bbox_loss_coef, cfg.giou_loss_coef, cfg.dec_layers, cfg.aux_loss,
                               cfg.interm_loss_coef)
    weights["loss_align"] = cfg.align_loss_coef
    return PromptCriterion(cfg.max_prompts, matcher, weights, cfg.focal_alpha, cfg.align_temperature)


__all__ = ["PromptCriterion", "alignment_loss", "build_prompt_criterion"]
