"""`DFINECriterion`: D-FINE's losses as the official DFINECriterion computes them.

- `loss_vfl`: varifocal classification on the Hungarian matching of each output's own layer.
- `loss_bbox` (L1) / `loss_giou` on the *GO indices*: the union of the matchings of every decoder
  layer, the first-layer (`pre`) head and the encoder proposals, each query keeping its most
  frequent target; normalised by the size of that union.
- `loss_fgl` (Fine-Grained Localization): the ground-truth edge distances (in W(n) units relative
  to the initial reference box) split between their two neighbouring bins; cross-entropy on both,
  weighted by the interpolation weights and by the IoU of the predicted box.
- `loss_ddf` (Decoupled Distillation Focal, GO-LSD): KL(softmax(teacher/T) || softmax(pred/T))·T²,
  teacher = the last layer's distributions (detached); matched queries weighted by IoU, the
  others by the teacher's confidence; positives and negatives averaged separately and mixed
  by sqrt of their counts. Zero on the last layer itself.
Suffixes: `_{i}` earlier decoder layers, `_pre` layer 0's plain box head, `_enc` encoder
proposals, `_dn`/`_dn_{i}`/`_dn_pre` denoising queries (fixed assignment, normalised by
num_boxes · groups). `forward` returns unweighted losses; `total_loss` weighs them.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.losses.matcher import HungarianMatcher
from edgedet.losses.varifocal import varifocal_loss
from edgedet.nn.box_ops import box_cxcywh_to_xyxy, box_iou, generalized_box_iou
from edgedet.nn.denoising import dn_positive_indices
from edgedet.nn.dfine_decoder import weighting_function

Indices = List[Tuple[Tensor, Tensor]]
DFINE_LOSSES = ("loss_vfl", "loss_bbox", "loss_giou", "loss_fgl", "loss_ddf")


def translate_gt(gt: Tensor, reg_max: int, reg_scale: Tensor, up: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Continuous edge distances -> (left bin index as float, weight of the right bin, weight of the left bin)."""
    gt = gt.reshape(-1)
    values = weighting_function(reg_max, up, reg_scale)
    left = ((values.unsqueeze(0) - gt.unsqueeze(1)) <= 0).sum(dim=1) - 1
    idx = left.float()
    w_right, w_left = torch.zeros_like(idx), torch.zeros_like(idx)
    inside = (idx >= 0) & (idx < reg_max)
    li = idx[inside].long()
    d_left = (gt[inside] - values[li]).abs()
    d_right = (values[li + 1] - gt[inside]).abs()
    w_right[inside] = d_left / (d_left + d_right)
    w_left[inside] = 1.0 - w_right[inside]
    below, above = idx < 0, idx >= reg_max
    w_left[below], w_right[below], idx[below] = 1.0, 0.0, 0.0
    w_left[above], w_right[above], idx[above] = 0.0, 1.0, reg_max - 0.1
    return idx, w_right, w_left


def bbox2distance(points: Tensor, boxes_xyxy: Tensor, reg_max: int, reg_scale: Tensor, up: Tensor, eps: float = 0.1):
    """Target boxes as edge distances from reference boxes (cx, cy, w, h), in the units FDR predicts."""
    rs = reg_scale.abs()
    sx, sy = points[:, 2] / rs + 1e-16, points[:, 3] / rs + 1e-16
    left = (points[:, 0] - boxes_xyxy[:, 0]) / sx - 0.5 * rs
    top = (points[:, 1] - boxes_xyxy[:, 1]) / sy - 0.5 * rs
    right = (boxes_xyxy[:, 2] - points[:, 0]) / sx - 0.5 * rs
    bottom = (boxes_xyxy[:, 3] - points[:, 1]) / sy - 0.5 * rs
    idx, w_right, w_left = translate_gt(torch.stack([left, top, right, bottom], -1), reg_max, rs, up)
    return idx.clamp(min=0, max=reg_max - eps).reshape(-1).detach(), w_right.detach(), w_left.detach()


def go_indices(indices: Indices, others: Sequence[Indices]) -> Indices:
    """Union of matchings: every (query, target) pair seen by any layer; a query keeps its most frequent target."""
    merged = [(torch.cat([q, *[o[b][0] for o in others]]), torch.cat([t, *[o[b][1] for o in others]]))
              for b, (q, t) in enumerate(indices)]
    out = []
    for q, t in merged:
        if q.numel() == 0:
            out.append((q.long(), t.long()))
            continue
        pairs, counts = torch.unique(torch.stack([q, t], 1), return_counts=True, dim=0)
        rows: Dict[int, int] = {}
        for r, c in pairs[torch.argsort(counts, descending=True, stable=True)].tolist():
            rows.setdefault(r, c)
        out.append((torch.tensor(list(rows), dtype=torch.int64, device=q.device),
                    torch.tensor(list(rows.values()), dtype=torch.int64, device=q.device)))
    return out


class DFINECriterion(nn.Module):
    def __init__(self, num_classes: int, matcher: nn.Module, weight_dict: Dict[str, float], reg_max: int = 32,
                 vfl_alpha: float = 0.75, vfl_gamma: float = 2.0, ddf_temperature: float = 5.0):
        super().__init__()
        self.num_classes, self.matcher, self.reg_max = num_classes, matcher, reg_max
        self.weight_dict = dict(weight_dict)
        self.vfl_alpha, self.vfl_gamma, self.ddf_temperature = vfl_alpha, vfl_gamma, ddf_temperature

    # ------------------------------------------------------------ single losses

    @staticmethod
    def _src_idx(indices: Indices) -> Tuple[Tensor, Tensor]:
        batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        return batch, torch.cat([src for src, _ in indices])

    @staticmethod
    def _matched_targets(targets, indices: Indices, key: str) -> Tensor:
        return torch.cat([t[key][j] for t, (_, j) in zip(targets, indices)])

    def _ious(self, outputs: Dict, targets, indices: Indices) -> Tensor:
        src = outputs["pred_boxes"][self._src_idx(indices)].float()
        tgt = self._matched_targets(targets, indices, "boxes").to(src)
        if not len(src):
            return src.new_zeros(0)
        return torch.diag(box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))[0]).detach()

    def loss_vfl(self, outputs: Dict, targets, indices: Indices, num_boxes: float) -> Dict[str, Tensor]:
        logits = outputs["pred_logits"].float()
        idx = self._src_idx(indices)
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        classes[idx] = self._matched_targets(targets, indices, "labels").to(logits.device)
        positive = F.one_hot(classes, self.num_classes + 1)[..., :-1].float()
        score = torch.zeros(logits.shape[:2], dtype=torch.float32, device=logits.device)
        score[idx] = self._ious(outputs, targets, indices)
        # official normalisation: mean over queries, times Q, / num_boxes == sum / num_boxes
        return {"loss_vfl": varifocal_loss(logits, score.unsqueeze(-1) * positive, positive, num_boxes,
                                           self.vfl_alpha, self.vfl_gamma)}

    def loss_boxes(self, outputs: Dict, targets, indices: Indices, num_boxes: float) -> Dict[str, Tensor]:
        src = outputs["pred_boxes"][self._src_idx(indices)]
        tgt = self._matched_targets(targets, indices, "boxes").to(src)
        l1 = F.l1_loss(src, tgt, reduction="none").sum() / num_boxes
        giou = (1 - torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt)))).sum() / num_boxes
        return {"loss_bbox": l1, "loss_giou": giou}

    def loss_local(self, outputs: Dict, targets, indices: Indices, num_boxes: float, up: Tensor, reg_scale: Tensor,
                   pos_neg: Optional[Tuple[Tensor, Tensor]]) -> Tuple[Dict[str, Tensor], Tuple[Tensor, Tensor]]:
        """FGL and DDF; also returns (sqrt #positives, sqrt #negatives) of this output for DDF mixing."""
        if "pred_corners" not in outputs:
            return {}, pos_neg
        n_bins = self.reg_max + 1
        idx = self._src_idx(indices)
        tgt = self._matched_targets(targets, indices, "boxes").to(outputs["pred_boxes"])
        corners = outputs["pred_corners"][idx].reshape(-1, n_bins)
        ref = outputs["ref_points"][idx].detach()
        with torch.no_grad():
            target_bins, w_right, w_left = bbox2distance(ref, box_cxcywh_to_xyxy(tgt), self.reg_max, reg_scale, up)
        ious = self._ious(outputs, targets, indices)
        weight = ious.unsqueeze(-1).repeat(1, 4).reshape(-1)
        left = target_bins.long()
        fgl = (F.cross_entropy(corners, left, reduction="none") * w_left.reshape(-1)
               + F.cross_entropy(corners, left + 1, reduction="none") * w_right.reshape(-1))
        losses = {"loss_fgl": (fgl * weight).sum() / num_boxes}

        pred = outputs["pred_corners"].reshape(-1, n_bins)
        teacher = outputs["teacher_corners"].reshape(-1, n_bins)
        if torch.equal(pred, teacher):
            losses["loss_ddf"] = pred.sum() * 0.0
            return losses, pos_neg
        conf = outputs["teacher_logits"].sigmoid().max(dim=-1)[0].detach().clone()
        mask = torch.zeros_like(conf, dtype=torch.bool)
        mask[idx] = True
        conf[idx] = ious.to(conf.dtype)
        mask = mask.unsqueeze(-1).repeat(1, 1, 4).reshape(-1)
        conf = conf.unsqueeze(-1).repeat(1, 1, 4).reshape(-1)
        t = self.ddf_temperature
        kl = F.kl_div(F.log_softmax(pred / t, dim=1), F.softmax(teacher.detach() / t, dim=1), reduction="none").sum(-1)
        kl = conf * (t ** 2) * kl
        if pos_neg is None:
            batch_scale = 8 / outputs["pred_boxes"].shape[0]  # official: independent of the per-GPU batch
            pos_neg = ((mask.sum() * batch_scale) ** 0.5, ((~mask).sum() * batch_scale) ** 0.5)
        n_pos, n_neg = pos_neg
        pos = kl[mask].mean() if mask.any() else kl.sum() * 0.0
        neg = kl[~mask].mean() if (~mask).any() else kl.sum() * 0.0
        losses["loss_ddf"] = (pos * n_pos + neg * n_neg) / (n_pos + n_neg)
        return losses, pos_neg

    # ------------------------------------------------------------ forward

    def _num_boxes(self, n: int, device) -> float:
        value = torch.as_tensor([float(n)], device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(value)
            value = value / torch.distributed.get_world_size()
        return max(float(value.item()), 1.0)

    def _layer(self, outputs: Dict, targets, own: Indices, go: Indices, n_own: float, n_go: float, suffix: str,
               up: Tensor, reg_scale: Tensor, pos_neg, local: bool = True):
        out = self.loss_vfl(outputs, targets, own, n_own)
        out.update(self.loss_boxes(outputs, targets, go, n_go))
        if local:
            extra, pos_neg = self.loss_local(outputs, targets, go, n_go, up, reg_scale, pos_neg)
            out.update(extra)
        return {k + suffix: v for k, v in out.items()}, pos_neg

    def forward(self, outputs: Dict, targets: Sequence[Dict]) -> Dict[str, Tensor]:
        device = outputs["pred_logits"].device
        up, reg_scale = outputs["up"], outputs["reg_scale"]
        aux = list(outputs.get("aux_outputs") or [])
        pre, enc = outputs["pre_outputs"], list(outputs.get("enc_outputs") or [])
        indices = self.matcher(outputs, targets)
        cached = [self.matcher(o, targets) for o in aux + [pre]]
        cached_enc = [self.matcher(o, targets) for o in enc]
        go = go_indices(indices, cached + cached_enc)
        n = self._num_boxes(sum(len(t["labels"]) for t in targets), device)
        n_go = self._num_boxes(sum(len(q) for q, _ in go), device)

        losses, pos_neg = self._layer(outputs, targets, indices, go, n, n_go, "", up, reg_scale, None)
        for i, o in enumerate(aux):
            # DDF is zero on the last layer (its own teacher); the earlier layers set the pos/neg mix
            extra, pos_neg = self._layer(o, targets, cached[i], go, n, n_go, f"_{i}", up, reg_scale, None)
            losses.update(extra)
        extra, _ = self._layer(pre, targets, cached[-1], go, n, n_go, "_pre", up, reg_scale, None, local=False)
        losses.update(extra)
        for i, o in enumerate(enc):
            extra, _ = self._layer(o, targets, cached_enc[i], go, n, n_go, "_enc" if i == 0 else f"_enc_{i}", up, reg_scale,
                                   None, local=False)
            losses.update(extra)
        losses.update(self._denoising(outputs, targets, n, up, reg_scale, pos_neg, len(aux)))
        for k in losses:
            self.weight_dict.setdefault(k, self.weight_dict.get("_".join(k.split("_")[:2]), 0.0))
        return {k: torch.nan_to_num(v, nan=0.0) for k, v in losses.items()}

    def _denoising(self, outputs, targets, n, up, reg_scale, pos_neg, num_aux) -> Dict[str, Tensor]:
        dn_layers, dn_meta = outputs.get("dn_outputs"), outputs.get("dn_meta")
        names = [f"_dn_{i}" for i in range(num_aux + 1)] + ["_dn_pre"]
        if not dn_layers or not dn_meta or dn_meta.get("pad_size", 0) == 0:
            if not self.training:
                return {}
            zero = outputs["pred_logits"].sum() * 0.0  # stable logged keys when a batch has no box
            return {k + s: zero for s in names for k in DFINE_LOSSES if not (s == "_dn_pre" and k in ("loss_fgl", "loss_ddf"))}
        indices = dn_positive_indices(targets, dn_meta)
        norm = n * dn_meta["num_dn_group"]
        out: Dict[str, Tensor] = {}
        for i, o in enumerate(dn_layers):
            extra, _ = self._layer(o, targets, indices, indices, norm, norm, f"_dn_{i}", up, reg_scale, pos_neg)
            out.update(extra)
        extra, _ = self._layer(outputs["dn_pre_outputs"], targets, indices, indices, norm, norm, "_dn_pre", up, reg_scale,
                               pos_neg, local=False)
        out.update(extra)
        return out

    def total_loss(self, losses: Dict[str, Tensor]) -> Tensor:
        terms = [v * self.weight_dict[k] for k, v in losses.items() if self.weight_dict.get(k, 0.0) != 0]
        if not terms:
            raise ValueError("DFINECriterion.total_loss: no loss has a non-zero weight; check weight_dict")
        return torch.stack(terms).sum()


def build_dfine_criterion(cfg) -> DFINECriterion:
    """Matcher and the official weights from a `DFINEConfig` (suffixed keys inherit their base weight)."""
    matcher = HungarianMatcher(cost_class=cfg.set_cost_class, cost_bbox=cfg.set_cost_bbox, cost_giou=cfg.set_cost_giou,
                               focal=True, focal_alpha=cfg.focal_alpha)
    weights = {"loss_vfl": cfg.loss_vfl, "loss_bbox": cfg.loss_bbox, "loss_giou": cfg.loss_giou,
               "loss_fgl": cfg.loss_fgl, "loss_ddf": cfg.loss_ddf}
    return DFINECriterion(cfg.num_classes, matcher, weights, cfg.reg_max, cfg.vfl_alpha, cfg.vfl_gamma)


__all__ = ["DFINECriterion", "build_dfine_criterion", "bbox2distance", "translate_gt", "go_indices", "DFINE_LOSSES"]
