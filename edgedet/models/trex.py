"""T-Rex2-style prompted open-set detector (Jiang et al. 2024), registered as `trex`.

A DINO detector (same backbone levels, deformable encoder, query selection, box-refining
decoder, contrastive denoising) whose fixed classifier is replaced by alignment with K prompt
embeddings: every query scores scale * cos(W q, p_k) + bias against each prompt (sigmoid,
focal loss), so "classes" are whatever the prompts describe. Prompts come from

- visual exemplars (`encode_visual_prompts`): boxes or points on one or more images, encoded by
  `edgedet.nn.prompt_encoder.VisualPromptEncoder` from those images' encoder memory;
- text (`encode_text_prompts`): `edgedet.nn.text_encoder` (MiniLM + projection, or hashed tokens);

and may be averaged per class (`average_prompts`). Inference = encode prompts once, then
`forward(images, prompts=..., prompt_mask=...)` per frame. Training: the common engine
(`edgedet train --model trex`): in training mode with targets and no prompts, forward samples a
prompted task per batch (`edgedet.models.trex_prompts`); loss `edgedet.losses.prompt_criterion`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.config import ConfigError
from edgedet.models.base import DetectorBase
from edgedet.models.dino import DINOConfig, _check_config, build_multiscale_input, multiscale_features
from edgedet.nn.mlp import MLP
from edgedet.nn.prompt_encoder import PromptAlignment, VisualPromptEncoder, as_bool, average_prompts
from edgedet.nn.text_encoder import TEXT_ENCODERS, build_text_encoder
from edgedet.nn.trex_transformer import ImageMemory, TRexTransformer, build_prompt_cdn_queries
from edgedet.registry import MODELS


@dataclass
class TRexConfig(DINOConfig):
    """DINO's fields plus the prompt fields. num_classes / class_names describe the *default prompts*
    (used when forward gets none, e.g. a plain `converters.export`); see `TRex.set_default_prompts`.
    Training through the engine keeps them at the text prompts of the class names."""

    name: str = "trex"
    num_classes: int = 16
    max_prompts: int = 16  # K: prompt slots per image (the detector artifact's fixed width)
    max_prompt_boxes: int = 4  # N: exemplar boxes per class per prompt image (the encoder artifact's width)
    prompt_dim: int = 256
    prompt_enc_layers: int = 1
    text_encoder: str = "minilm"  # minilm | token
    align_loss_coef: float = 1.0  # visual <-> text InfoNCE
    align_temperature: float = 0.1
    # Training (prompted tasks sampled per batch, `edgedet.models.trex_prompts.sample_prompts`):
    prompt_visual_prob: float = 0.5  # share of images prompted visually (else by text)
    prompt_point_prob: float = 0.2  # share of exemplar boxes given as points
    prompt_classes: List[int] = field(default_factory=list)  # dataset labels prompted in training; empty = all


def _check_trex_config(cfg: TRexConfig) -> None:
    _check_config(cfg)
    if cfg.max_prompts < 1 or cfg.max_prompt_boxes < 1:
        raise ConfigError(f"trex max_prompts and max_prompt_boxes must be >= 1, got {cfg.max_prompts}, {cfg.max_prompt_boxes}")
    if cfg.text_encoder not in TEXT_ENCODERS:
        raise ConfigError(f"unknown trex text_encoder '{cfg.text_encoder}'. Valid: {', '.join(TEXT_ENCODERS.names())}")


class TRex(DetectorBase):
    """forward(images, mask, targets, prompts [B|1, K, Dp], prompt_mask [B|1, K] True = valid) -> DINO's dict
    with pred_logits [B, Q, K] (one column per prompt slot; invalid slots at MASKED_LOGIT).
    Without prompts the default prompts (`set_default_prompts`) are used: pred_logits [B, Q, num_classes]."""

    score_activation = "sigmoid"
    class_dependent_patterns = ("default_prompts",)  # [num_classes, Dp]; training recomputes them

    def __init__(self, cfg: TRexConfig):
        super().__init__()
        _check_trex_config(cfg)
        self.config = cfg
        d = cfg.hidden_dim
        self.transformer = TRexTransformer(
            d_model=d, n_heads=cfg.nheads, num_queries=cfg.num_queries, num_encoder_layers=cfg.enc_layers,
            num_decoder_layers=cfg.dec_layers, dim_feedforward=cfg.dim_feedforward, dropout=cfg.dropout,
            num_feature_levels=cfg.num_feature_levels, enc_n_points=cfg.enc_n_points, dec_n_points=cfg.dec_n_points,
            msda_impl=cfg.msda_impl, look_forward_twice=cfg.look_forward_twice, embed_init_tgt=cfg.embed_init_tgt,
        )
        self.backbone, self.input_proj, self.position_embedding = build_multiscale_input(cfg)
        box_head = MLP(d, d, 4, 3)
        nn.init.constant_(box_head.layers[-1].weight, 0.0)
        nn.init.constant_(box_head.layers[-1].bias, 0.0)
        n = cfg.dec_layers
        self.bbox_embed = nn.ModuleList([box_head] * n if cfg.dec_pred_bbox_embed_share else
                                        [copy.deepcopy(box_head) for _ in range(n)])
        self.transformer.decoder.bbox_embed = self.bbox_embed
        self.transformer.enc_out_bbox_embed = copy.deepcopy(box_head)
        self.align = PromptAlignment(d, cfg.prompt_dim)  # every decoder layer
        self.enc_align = PromptAlignment(d, cfg.prompt_dim)  # encoder proposals (query selection)
        self.prompt_encoder = VisualPromptEncoder(d, cfg.prompt_dim, cfg.num_feature_levels, cfg.nheads,
                                                  cfg.dec_n_points, cfg.prompt_enc_layers, cfg.dim_feedforward,
                                                  cfg.msda_impl)
        self.text_encoder = build_text_encoder(cfg.text_encoder, cfg.prompt_dim)
        self.dn_content = nn.Linear(cfg.prompt_dim, d)  # prompt embedding -> denoising query content
        # Prompts used when forward gets none: random until set_default_prompts (saved in checkpoints).
        self.register_buffer("default_prompts", F.normalize(torch.randn(cfg.num_classes, cfg.prompt_dim), dim=-1))

    # ---------------------------------------------------------------- images

    def multiscale_features(self, images: Tensor, mask: Optional[Tensor]):
        """-> per level (features [B, D, H_l, W_l], mask [B, H_l, W_l], position [B, D, H_l, W_l]) as DINO."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"TRex expects images [B, 3, H, W], got {tuple(images.shape)}")
        return multiscale_features(self, images, mask)

    def encode_images(self, images: Tensor, mask: Optional[Tensor] = None) -> ImageMemory:
        """images [B, 3, H, W] -> the encoder memory (shared by prompt encoding and detection)."""
        return self.transformer.encode(*self.multiscale_features(images, mask))

    # ---------------------------------------------------------------- prompts

    def encode_visual_prompts(self, images_or_memory, boxes_cxcywh: Tensor, box_valid: Optional[Tensor] = None,
                              mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Exemplars on prompt images -> per image class embeddings.

        images_or_memory: images [B, 3, H, W] or their `ImageMemory`; boxes_cxcywh [B, K, N, 4]
        normalised to each image (w = h = 0: a point); box_valid [B, K, N] bool (None = all valid).
        Returns (embeddings [B, K, Dp] unit length, class_valid [B, K]); average over images
        with `average_prompts`.
        """
        mem = images_or_memory if isinstance(images_or_memory, ImageMemory) else self.encode_images(images_or_memory, mask)
        if box_valid is None:
            box_valid = torch.ones(boxes_cxcywh.shape[:3], dtype=torch.bool, device=boxes_cxcywh.device)
        return self.prompt_encoder(mem.memory, mem.spatial_shapes, mem.level_start_index, mem.padding_mask,
                                   mem.valid_ratios, boxes_cxcywh, box_valid)

    def encode_text_prompts(self, texts: Sequence[str]) -> Tensor:
        """Class names / phrases -> [K, Dp] unit-length prompt embeddings."""
        return F.normalize(self.text_encoder.encode(list(texts)), dim=-1)

    def set_default_prompts(self, embeddings: Tensor, names: Optional[Sequence[str]] = None) -> None:
        """Bake prompts [C, Dp] into the model: forward without prompts (and a plain single-artifact
        export) then detects these C classes; config.num_classes / class_names follow."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.config.prompt_dim:
            raise ValueError(f"default prompts must be [C, {self.config.prompt_dim}], got {tuple(embeddings.shape)}")
        if names is not None and len(names) != embeddings.shape[0]:
            raise ValueError(f"got {len(names)} names for {embeddings.shape[0]} default prompts")
        self.default_prompts = F.normalize(embeddings.detach().clone().to(self.default_prompts), dim=-1)
        self.config.num_classes = int(embeddings.shape[0])
        if names is not None:
            self.config.class_names = list(names)

    @staticmethod
    def average_prompts(embeddings: Tensor, valid: Tensor) -> Tuple[Tensor, Tensor]:
        """[M, K, Dp], [M, K] -> per class mean over sources ([K, Dp], [K]); see `edgedet.nn.prompt_encoder`."""
        return average_prompts(embeddings, valid)

    # ---------------------------------------------------------------- detection

    def forward(self, images: Tensor, mask: Optional[Tensor] = None, targets: Optional[List[Dict[str, Tensor]]] = None,
                prompts: Optional[Tensor] = None, prompt_mask: Optional[Tensor] = None,
                memory: Optional[ImageMemory] = None) -> Dict:
        cfg = self.config
        align = None
        mem = memory if memory is not None else self.encode_images(images, mask)
        if prompts is None and self.training and targets is not None:
            prompts, prompt_mask, targets, align = self._sample_task(mem, targets)
        if prompts is None:
            prompts, prompt_mask = self.default_prompts, None
        batch = mem.memory.shape[0]
        if prompts.dim() == 2:
            prompts = prompts.unsqueeze(0)
        if prompts.dim() != 3 or prompts.shape[-1] != cfg.prompt_dim or prompts.shape[0] not in (1, batch):
            raise ValueError(f"prompts must be [B or 1, K, {cfg.prompt_dim}], got {tuple(prompts.shape)}")
        prompts = prompts.expand(batch, -1, -1)
        if prompt_mask is None:
            prompt_mask = torch.ones(prompts.shape[:2], dtype=torch.bool, device=prompts.device)
        prompt_mask = as_bool(prompt_mask).reshape(-1, prompts.shape[1]).expand(batch, -1)

        use_dn = self.training and targets is not None and cfg.dn_number > 0
        dn = None
        if use_dn:
            if len(targets) != batch:
                raise ValueError(f"TRex got {len(targets)} targets for {batch} images")
            dn = build_prompt_cdn_queries(targets, self.dn_content(prompts), prompt_mask, cfg.num_queries,
                                          cfg.dn_number, cfg.dn_label_noise_ratio, cfg.dn_box_noise_scale)
        t = self.transformer.decode(mem, lambda tokens: self.enc_align(tokens, prompts, prompt_mask), dn)
        hs = list(t["hs"])
        if self.training:  # keeps dn_content in the graph without denoising queries (DDP unused-parameter check)
            hs[0] = hs[0] + self.dn_content.weight[0, 0] * 0.0
        logits = [self.align(h, prompts, prompt_mask) for h in hs]
        boxes = t["boxes"]
        dn_meta = dn.dn_meta if dn is not None else {"pad_size": 0, "num_dn_group": 0}
        if dn is not None:
            pad = dn_meta["pad_size"]
            dn_logits, logits = [x[:, :pad] for x in logits], [x[:, pad:] for x in logits]
            dn_boxes, boxes = [x[:, :pad] for x in boxes], [x[:, pad:] for x in boxes]
        out: Dict = self._layer_outputs(logits, boxes)
        out["interm_outputs"] = {"pred_logits": t["interm_logits"], "pred_boxes": t["interm_boxes"]}
        if use_dn:
            out["dn_meta"] = dn_meta
            if dn is not None:
                out["dn_outputs"] = self._layer_outputs(dn_logits, dn_boxes)
        if align is not None:  # a sampled task: the criterion scores these slot targets and the alignment
            out["prompt_targets"], out["prompt_align"] = targets, align
        return out

    def _sample_task(self, mem: ImageMemory, targets: List[Dict[str, Tensor]]):
        """Dataset targets -> a prompted task (see `trex_prompts.sample_prompts`). The default prompts
        follow the text prompts of the class names (as of this step), so evaluation and a plain export
        detect the dataset's classes."""
        from edgedet.models.trex_prompts import sample_prompts

        cfg = self.config
        names = list(cfg.class_names) or [str(i) for i in range(cfg.num_classes)]
        classes = list(cfg.prompt_classes) or list(range(len(names)))
        task = sample_prompts(self, mem, targets, classes, names, cfg.prompt_visual_prob, cfg.prompt_point_prob)
        if len(names) == self.default_prompts.shape[0]:
            with torch.no_grad():
                text = task[3]["text"] if classes == list(range(len(names))) else self.encode_text_prompts(names)
                self.default_prompts.copy_(F.normalize(text.detach().float(), dim=-1))
        return task

    def _layer_outputs(self, logits, boxes) -> Dict:
        out: Dict = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.config.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return out

    def detect_with_visual_prompts(self, images: Tensor, prompt_images: Tensor, boxes_cxcywh: Tensor,
                                   box_valid: Optional[Tensor] = None) -> Dict:
        """One shot: exemplars on `prompt_images` [M, 3, h, w] (averaged over the M images) -> detections on `images`."""
        emb, valid = self.encode_visual_prompts(prompt_images, boxes_cxcywh, box_valid)
        prompts, prompt_mask = average_prompts(emb, valid)
        return self(images, prompts=prompts[None], prompt_mask=prompt_mask[None])

    def build_criterion(self) -> nn.Module:
        from edgedet.losses.prompt_criterion import build_prompt_criterion  # losses import models' configs lazily

        return build_prompt_criterion(self.config)


@MODELS.register("trex", config=TRexConfig)
def build_trex(cfg: TRexConfig) -> TRex:
    return TRex(cfg)


__all__ = ["TRexConfig", "TRex", "build_trex"]
