"""Co-DETR (Zong et al. 2023, "DETRs with Collaborative Hybrid Assignments Training").

Registered as `co_dino` and `co_deformable_detr`. Training adds one-to-many auxiliary heads
(ATSS, Faster R-CNN; `edgedet.nn.co_heads`) on a feature pyramid made from the encoder output,
and turns each head's positive anchors / proposals into extra decoder query groups supervised
by that head's assignment. Inference is unchanged: in eval mode (or without targets) `forward`
is exactly the base detector's, and `to_base_model()` returns the plain base detector with the
trained weights (what gets exported; the auxiliary modules, all under `co.`, are dropped).

The model classes subclass the base detectors, so every base parameter keeps its name.

    model = edgedet.create_model("co_dino", num_classes=3, backbone="resnet18",
                                 aux_heads=[{"type": "atss"}, {"type": "rcnn", "fc_dim": 256}])
    criterion = model.build_criterion()          # base loss + auxiliary heads + positive queries
    losses = criterion(model(images, mask, targets), targets)
    deployable = model.to_base_model()           # a plain DINO
"""
from __future__ import annotations

import dataclasses
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from edgedet.config import ConfigError, from_dict, to_dict
from edgedet.models.co_detr_adapters import CO_ADAPTERS
from edgedet.models.deformable_detr import DeformableDETR, DeformableDETRConfig
from edgedet.models.dino import DINO, DINOConfig
from edgedet.models.factory import create_model_from_config
from edgedet.nn.co_heads import atss_head, rcnn_head  # noqa: F401  (register the head types)
from edgedet.nn.co_heads.common import AUX_HEADS, AuxHeadConfig
from edgedet.nn.co_heads.positive_queries import PositiveQueryBuilder
from edgedet.nn.co_heads.pyramid import build_pyramid, image_sizes, split_levels
from edgedet.registry import MODELS

# The paper's λ2: an auxiliary head's losses weigh λ2 · (decoder layers) unless `loss_weight` is set.
DEFAULT_AUX_LAMBDA = 2.0


@dataclass
class CoDETRConfig:
    """The collaborative-training fields, mixed into a base family's config (`CoDINOConfig`, ...).

    aux_heads: one mapping per head, `type` in AUX_HEADS (atss | rcnn) plus that type's settings
    (see `ATSSHeadConfig`, `RCNNHeadConfig`: loss_weight, aux_query_weight, max_pos_queries, ...).
    """

    base: str = ""
    aux_heads: List[Dict[str, Any]] = field(default_factory=lambda: [{"type": "atss"}, {"type": "rcnn"}])
    pyramid: str = "auto"  # auto | multiscale | identity | simple
    query_pool_size: int = 3  # RoIAlign size of the positive queries' content features


@dataclass
class CoDINOConfig(CoDETRConfig, DINOConfig):
    name: str = "co_dino"
    base: str = "dino"


@dataclass
class CoDeformableDETRConfig(CoDETRConfig, DeformableDETRConfig):
    name: str = "co_deformable_detr"
    base: str = "deformable_detr"
    with_box_refine: bool = True
    two_stage: bool = True


def parse_aux_heads(entries: List[Dict[str, Any]]) -> List[AuxHeadConfig]:
    """`model.aux_heads` mappings -> typed head configs (unknown types / keys raise)."""
    out = []
    for i, entry in enumerate(entries):
        if "type" not in entry:
            raise ConfigError(f"model.aux_heads[{i}] needs a 'type' (one of: {', '.join(AUX_HEADS.names())})")
        cfg_cls = AUX_HEADS.meta(entry["type"])["config"]
        cfg = from_dict(cfg_cls, dict(entry), f"model.aux_heads[{i}]")
        if cfg.max_pos_queries < 1:
            raise ConfigError(f"model.aux_heads[{i}].max_pos_queries must be >= 1, got {cfg.max_pos_queries}")
        out.append(cfg)
    return out


class CoDETRMixin:
    """Collaborative hybrid assignment training on top of a base detector class (listed after it)."""

    score_activation = "sigmoid"

    def class_dependent_keys(self) -> List[str]:
        """The base detector's class heads plus the auxiliary heads' classifiers and the Faster R-CNN
        head's per-class box regressor (`fc_reg`, 4 rows per class unless class-agnostic)."""
        co = [k for k in self.state_dict() if fnmatch.fnmatchcase(k, "co.heads.*.atss_cls.*")
              or fnmatch.fnmatchcase(k, "co.heads.*.fc_cls.*") or self.class_rows_per_class(k) > 1]
        return super().class_dependent_keys() + co

    def class_rows_per_class(self, key: str) -> int:
        """Rows each class owns in the class-dependent tensor `key` (class c: rows c*n .. c*n+n-1)."""
        m = re.fullmatch(r"co\.heads\.(\d+)\.fc_reg\.(weight|bias)", key)
        if m is None:
            return super().class_rows_per_class(key)
        head = self.head_configs[int(m.group(1))]
        return 1 if getattr(head, "class_agnostic", True) else 4

    def _init_co(self, cfg: CoDETRConfig, family: str) -> None:
        if cfg.base != family:
            raise ConfigError(f"model '{cfg.name}' trains a '{family}' base, but base is '{cfg.base}'")
        self.adapter = CO_ADAPTERS.get(family)
        self.head_configs = parse_aux_heads(cfg.aux_heads)
        d = cfg.hidden_dim
        pyramid = build_pyramid(cfg.pyramid, d, cfg.num_feature_levels)
        num_levels = len(pyramid.output_strides(self.level_strides()))
        heads = [AUX_HEADS.get(h.type)(h, d, cfg.num_classes, num_levels) for h in self.head_configs]
        builders = [PositiveQueryBuilder(d, cfg.query_pool_size, self.adapter.needs_query_pos) for _ in heads]
        self.co = nn.ModuleDict({"pyramid": pyramid, "heads": nn.ModuleList(heads), "queries": nn.ModuleList(builders)})

    def level_strides(self) -> List[int]:
        """Pixel stride of each encoder level: the backbone's, then doubling for the extra conv levels."""
        strides = list(self.backbone.strides)
        while len(strides) < self.config.num_feature_levels:
            strides.append(strides[-1] * 2)
        return strides[: self.config.num_feature_levels]

    def forward(self, images: Tensor, mask: Optional[Tensor] = None, targets: Optional[List[Dict[str, Tensor]]] = None) -> Dict:
        """Eval mode or no targets: the base detector's forward, unchanged. Training with targets:
        the base outputs plus `co_head_losses` {key: unweighted loss} and `co_query_outputs` (per
        head: pred_logits [B, G, C], pred_boxes [B, G, 4], aux_outputs, targets {labels, boxes, valid})."""
        if not self.training or targets is None:
            return super().forward(images, mask, targets)
        if len(targets) != images.shape[0]:
            raise ValueError(f"{type(self).__name__} got {len(targets)} targets for {images.shape[0]} images")
        if mask is None:
            mask = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.bool, device=images.device)
        enc = self.adapter.encode(self, images, mask)
        pyramid = self.co["pyramid"]
        features = pyramid(split_levels(enc.memory, enc.shapes_hw))
        strides = pyramid.output_strides(self.level_strides())
        image_hw = image_sizes(mask)
        head_losses, groups = {}, []
        for i, (hcfg, head, builder) in enumerate(zip(self.head_configs, self.co["heads"], self.co["queries"])):
            losses, positives = head(features, strides, image_hw, targets)
            head_losses.update({f"{k}_{hcfg.type}{i}": v for k, v in losses.items()})
            groups.append(builder(features, strides, image_hw, positives, hcfg.max_pos_queries, self.config.num_classes))
        out, group_outputs = self.adapter.decode(self, enc, targets, groups)
        out["co_head_losses"] = head_losses
        out["co_query_outputs"] = group_outputs
        return out

    def deploy(self) -> "CoDETRMixin":
        """Inference mode: the base forward only (auxiliary heads unused)."""
        return self.eval()

    def head_loss_weights(self) -> Dict[str, float]:
        """Weight of every key in `co_head_losses`: the head's loss_weight times its component weight."""
        weights = {}
        for i, (hcfg, head) in enumerate(zip(self.head_configs, self.co["heads"])):
            scale = hcfg.loss_weight if hcfg.loss_weight is not None else DEFAULT_AUX_LAMBDA * self.config.dec_layers
            weights.update({f"{k}_{hcfg.type}{i}": scale * w for k, w in head.loss_weights().items()})
        return weights

    def build_criterion(self) -> nn.Module:
        from edgedet.losses.co_criterion import CoCriterion

        return CoCriterion(super().build_criterion(), self.head_loss_weights(),
                           [h.aux_query_weight for h in self.head_configs])

    def base_config(self):
        """The base family's config with this model's values (the Co-DETR fields dropped)."""
        base_cls = MODELS.meta(self.config.base)["config"]
        names = {f.name for f in dataclasses.fields(base_cls)}
        data = {k: v for k, v in to_dict(self.config).items() if k in names}
        data["name"] = self.config.base
        return from_dict(base_cls, data, "model")

    def to_base_model(self) -> nn.Module:
        """The plain base detector (DINO / Deformable DETR) holding this model's weights, in eval mode."""
        cfg = self.base_config()
        model = create_model_from_config(dataclasses.replace(cfg, backbone_weights=None))  # weights come from self
        model.config = cfg
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("co.")}
        model.load_state_dict(state, strict=True)
        ref = next(self.parameters())
        return model.to(device=ref.device).eval()


class CoDINO(CoDETRMixin, DINO):
    """DINO trained with collaborative hybrid assignments (Co-DINO)."""

    def __init__(self, cfg: CoDINOConfig):
        DINO.__init__(self, cfg)
        self._init_co(cfg, "dino")


class CoDeformableDETR(CoDETRMixin, DeformableDETR):
    """Two-stage Deformable DETR with box refinement trained with collaborative hybrid assignments."""

    def __init__(self, cfg: CoDeformableDETRConfig):
        if not (cfg.two_stage and cfg.with_box_refine):
            raise ConfigError("co_deformable_detr needs two_stage=true and with_box_refine=true "
                              "(its auxiliary queries are reference boxes)")
        DeformableDETR.__init__(self, cfg)
        self._init_co(cfg, "deformable_detr")


@MODELS.register("co_dino", config=CoDINOConfig)
def build_co_dino(cfg: CoDINOConfig) -> CoDINO:
    return CoDINO(cfg)


@MODELS.register("co_deformable_detr", config=CoDeformableDETRConfig)
def build_co_deformable_detr(cfg: CoDeformableDETRConfig) -> CoDeformableDETR:
    return CoDeformableDETR(cfg)


__all__ = ["CoDETRConfig", "CoDINOConfig", "CoDeformableDETRConfig", "CoDINO", "CoDeformableDETR", "CoDETRMixin",
           "parse_aux_heads"]
