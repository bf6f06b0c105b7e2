"""`SetCriterion`: the set-prediction losses of the DETR family.

Predictions are matched one-to-one to targets (Hungarian), then each named loss is computed on
the matched pairs. Losses are picked by name (`labels`, `boxes`, `cardinality`) through
`get_loss`, so a family adds a loss by subclassing and extending `loss_map`. The same losses run
on every auxiliary decoder layer (keys suffixed `_0`, `_1`, …) and on the encoder's proposals
(`_enc`). Returned values are unweighted; `weight_dict` gives the weight of every key.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.losses.focal import sigmoid_focal_loss
from edgedet.nn.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

Indices = List[Tuple[Tensor, Tensor]]
LOSS_CLASSES = ("ce", "focal")
_SUFFIX = re.compile(r"(_(\d+|enc|interm|dn))+$")


class SetCriterion(nn.Module):
    """Hungarian-matched detection losses.

    num_classes: real classes C. With `loss_class="ce"` pred_logits has C + 1 columns (the last is
    no-object, down-weighted by `eos_coef`); with `"focal"` it has C sigmoid columns.
    weight_dict: weight of each base key (`loss_ce`, `loss_bbox`, `loss_giou`); suffixed keys
    returned for auxiliary/encoder outputs inherit the base weight unless given explicitly.
    """

    def __init__(self, num_classes: int, matcher: nn.Module, weight_dict: Dict[str, float],
                 losses: Sequence[str] = ("labels", "boxes", "cardinality"), loss_class: str = "ce", eos_coef: float = 0.1,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        if loss_class not in LOSS_CLASSES:
            raise ValueError(f"unknown loss_class '{loss_class}'. Valid: {', '.join(LOSS_CLASSES)}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.losses = list(losses)
        self.loss_class = loss_class
        self.eos_coef = eos_coef
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        unknown = [name for name in self.losses if name not in self.loss_map]
        if unknown:
            raise ValueError(f"unknown loss '{unknown[0]}'. Valid: {', '.join(self.loss_map)}")
        if loss_class == "ce":
            empty_weight = torch.ones(num_classes + 1)
            empty_weight[-1] = eos_coef
            self.register_buffer("empty_weight", empty_weight, persistent=False)
        self.weight_dict.setdefault("cardinality_error", 0.0)  # logged, never trained on

    # ------------------------------------------------------------------ registry of losses

    @property
    def loss_map(self) -> Dict[str, Callable[..., Dict[str, Tensor]]]:
        return {"labels": self.loss_labels, "boxes": self.loss_boxes, "cardinality": self.loss_cardinality}

    def get_loss(self, name: str, outputs: Dict, targets: Sequence[Dict], indices: Indices, num_boxes: float) -> Dict[str, Tensor]:
        """Compute loss `name` for one set of outputs (final, auxiliary or encoder)."""
        return self.loss_map[name](outputs, targets, indices, num_boxes)

    # ------------------------------------------------------------------ the losses

    @staticmethod
    def _src_permutation_idx(indices: Indices) -> Tuple[Tensor, Tensor]:
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        return batch_idx, src_idx

    def _target_classes(self, logits: Tensor, targets: Sequence[Dict], indices: Indices) -> Tensor:
        """[B, Q] class index per query: the matched target's label, else `num_classes` (no-object)."""
        idx = self._src_permutation_idx(indices)
        matched = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        classes[idx] = matched
        return classes

    def loss_labels(self, outputs: Dict, targets: Sequence[Dict], indices: Indices, num_boxes: float) -> Dict[str, Tensor]:
        """Classification: weighted cross-entropy (`ce`) or sigmoid focal loss over all queries (`focal`)."""
        logits = outputs["pred_logits"]
        target_classes = self._target_classes(logits, targets, indices)
        if self.loss_class == "ce":
            loss = F.cross_entropy(logits.transpose(1, 2).float(), target_classes, self.empty_weight.to(logits.device))
        else:
            onehot = F.one_hot(target_classes, logits.shape[-1] + 1)[..., :-1].to(logits.dtype)
            loss = sigmoid_focal_loss(logits.float(), onehot.float(), num_boxes, self.focal_alpha, self.focal_gamma)
        return {"loss_ce": loss}

    @torch.no_grad()
    def loss_cardinality(self, outputs: Dict, targets: Sequence[Dict], indices: Indices, num_boxes: float) -> Dict[str, Tensor]:
        """Absolute error in the number of predicted objects per image (a log, not a trained loss)."""
        logits = outputs["pred_logits"]
        if self.loss_class == "ce":
            n_pred = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1)
        else:
            n_pred = (logits.sigmoid().amax(-1) > 0.5).sum(1)
        n_tgt = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device)
        return {"cardinality_error": F.l1_loss(n_pred.float(), n_tgt.float())}

    def loss_boxes(self, outputs: Dict, targets: Sequence[Dict], indices: Indices, num_boxes: float) -> Dict[str, Tensor]:
        """L1 and (1 − GIoU) on matched cxcywh boxes, each summed and divided by `num_boxes`."""
        idx = self._src_permutation_idx(indices)
        src = outputs["pred_boxes"][idx].float()
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src)
        loss_bbox = F.l1_loss(src, tgt, reduction="none").sum() / num_boxes
        if len(src) == 0:
            loss_giou = src.sum()  # zero that keeps the graph
        else:
            giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt)))
            loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou}

    # ------------------------------------------------------------------ driver

    def num_boxes(self, targets: Sequence[Dict], device: torch.device) -> float:
        """Mean number of target boxes per process (all-reduced under torch.distributed), at least 1."""
        n = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(n)
            n = n / dist.get_world_size()
        return max(float(n.item()), 1.0)

    def compute_layer(self, outputs: Dict, targets: Sequence[Dict], num_boxes: float, suffix: str = "",
                      losses: Optional[Sequence[str]] = None, indices: Optional[Indices] = None) -> Dict[str, Tensor]:
        """Match (unless `indices` is given) and compute `losses` for one layer; keys get `suffix`."""
        if indices is None:
            indices = self.matcher(outputs, targets)
        out: Dict[str, Tensor] = {}
        for name in losses if losses is not None else self.losses:
            for k, v in self.get_loss(name, outputs, targets, indices, num_boxes).items():
                out[k + suffix] = v
        return out

    def encoder_targets(self, targets: Sequence[Dict]) -> List[Dict]:
        """Targets for the encoder's proposals: class-agnostic (all label 0) for focal models."""
        if self.loss_class != "focal":
            return list(targets)
        return [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]

    def forward(self, outputs: Dict, targets: Sequence[Dict]) -> Dict[str, Tensor]:
        """outputs: the model's dict (pred_logits, pred_boxes, optional aux_outputs, enc_outputs);
        targets: per image labels [n] int64 and boxes [n, 4] normalised cxcywh. Returns unweighted losses."""
        device = outputs["pred_logits"].device
        num_boxes = self.num_boxes(targets, device)
        main = {k: v for k, v in outputs.items() if k in ("pred_logits", "pred_boxes")}
        losses = self.compute_layer(main, targets, num_boxes)
        for i, aux in enumerate(outputs.get("aux_outputs") or []):
            losses.update(self.compute_layer(aux, targets, num_boxes, suffix=f"_{i}"))
        enc = outputs.get("enc_outputs")
        if enc is not None:
            enc_losses = [name for name in self.losses if name != "cardinality"]
            losses.update(self.compute_layer(enc, self.encoder_targets(targets), num_boxes, "_enc", enc_losses))
        self._cover_weights(losses)
        return losses

    def _cover_weights(self, losses: Dict[str, Tensor]) -> None:
        """Give each returned key a weight: explicit, else its base key's, else 0 (logged only)."""
        for k in losses:
            if k not in self.weight_dict:
                self.weight_dict[k] = self.weight_dict.get(_SUFFIX.sub("", k), 0.0)

    def total_loss(self, losses: Dict[str, Tensor]) -> Tensor:
        """Weighted sum of `losses` (the scalar to back-propagate)."""
        terms = [v * self.weight_dict[k] for k, v in losses.items() if self.weight_dict.get(k, 0.0) != 0]
        if not terms:
            raise ValueError("SetCriterion.total_loss: no loss has a non-zero weight; check weight_dict")
        return torch.stack(terms).sum()


__all__ = ["SetCriterion", "LOSS_CLASSES"]
