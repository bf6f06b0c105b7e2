"""What every detector family provides.

A detector is an nn.Module with a typed `config` (a `ModelConfig` subclass) whose
forward(images [B, 3, H, W], mask [B, H, W] True at padding or None, targets=None)
returns the standard dict:
    pred_logits [B, Q, C], pred_boxes [B, Q, 4] normalised cxcywh,
    aux_outputs: list of {pred_logits, pred_boxes} for earlier decoder layers,
    enc_outputs / interm_outputs, dn_meta where the family has them.
`targets` (list of {labels [n] int64, boxes [n, 4] normalised cxcywh}) is used only by
families that build training-time queries from ground truth (DINO's denoising).
`build_criterion()` returns the loss module that trains it.
`class_dependent_patterns` names (fnmatch patterns over state_dict keys) the tensors whose first
dimension is the class count; fine-tuning (`edgedet.engine.finetune`) re-initialises or re-maps
exactly those, so every family declares its own.
"""
from __future__ import annotations

import fnmatch
from typing import Dict, List, Optional, Tuple

from torch import Tensor, nn

from edgedet.config import ModelConfig


class DetectorBase(nn.Module):
    config: ModelConfig
    # True for the mask-free families (RT-DETR, D-FINE): padding is image content to them, batches are padded
    # with the deployed letterbox colour and boxes are normalised to the padded input. False: the model
    # takes a padding mask (True at padding) and predicts boxes normalised to the unpadded image; its exports
    # take the valid region as a second input and rebuild that mask.
    pads_as_content: bool = False
    # state_dict keys whose dim 0 is (num_classes + a fixed number of extra rows), e.g. "class_embed.*"
    class_dependent_patterns: Tuple[str, ...] = ()

    def class_dependent_keys(self) -> List[str]:
        """state_dict keys of the tensors whose shape depends on the class count."""
        return [k for k in self.state_dict() if any(fnmatch.fnmatchcase(k, p) for p in self.class_dependent_patterns)]

    def class_rows_per_class(self, key: str) -> int:
        """Rows each class owns in class-dependent tensor `key` (1; a per-class box regressor has 4)."""
        return 1

    def forward(self, images: Tensor, mask: Optional[Tensor] = None, targets: Optional[List[Dict[str, Tensor]]] = None) -> Dict:
        raise NotImplementedError

    def build_criterion(self) -> nn.Module:
        raise NotImplementedError
