"""How each official repository's checkpoint maps onto an edgedet model config.

Owns one `FamilySpec` (see `official_spec`) per supported family, registered in
`OFFICIAL_FAMILIES`: the keys that identify its checkpoints, the translation of its training
`args` into our config fields, and the same config inferred from tensor shapes when a
checkpoint carries no `args`.

All functions read the official key names (`backbone.0.body.*`, after any `module.` prefix is
removed). Facts behind the mappings:
- DETR, Deformable-DETR and DAB-DETR hard-code num_classes: 91 for `dataset_file == "coco"`,
  250 for "coco_panoptic", 20 otherwise; DINO uses `args.num_classes`.
- DETR's class head has num_classes + 1 outputs (the last is no-object); the others have
  num_classes sigmoid outputs.
- Head counts cannot be read from shapes (nn.MultiheadAttention packs heads into one matrix;
  MSDeformAttn packs heads x levels x points): without args the official default is assumed.
"""
from __future__ import annotations

from typing import Any, Dict

import torch

from edgedet.checkpoints.official_spec import (
    OFFICIAL_FAMILIES,
    Args,
    FamilySpec,
    OfficialCheckpointError,
    State,
    common_args,
    common_shapes,
    count_indexed,
    hardcoded_num_classes,
    has_fragment,
    position_embedding_arg,
    require,
)


# ---------------------------------------------------------------- DAB-DETR


def _dab_matches(state: State) -> bool:
    return "refpoint_embed.weight" in state and has_fragment(state, ".ca_qpos_sine_proj.")


def _dab_structure(state: State) -> Dict[str, Any]:
    """Switches visible in the key layout (the official build never exposes them as args)."""
    dec_layers = count_indexed(state, "transformer.decoder.layers")
    return {
        "modulate_hw_attn": "transformer.decoder.ref_anchor_head.layers.0.weight" in state,
        "keep_query_pos": dec_layers > 1 and "transformer.decoder.layers.1.ca_qpos_proj.weight" in state,
    }


def _dab_activation_from_keys(state: State) -> str:
    """PReLU leaves an `activation.weight` key; relu (the other official choice) leaves none."""
    return "prelu" if "transformer.encoder.layers.0.activation.weight" in state else "relu"


def _dab_from_args(args: Args, state: State) -> Dict[str, Any]:
    modelname = args.get("modelname", "dab_detr")
    if modelname != "dab_detr":
        raise OfficialCheckpointError(f"DAB-DETR repository model '{modelname}' is not supported; only 'dab_detr' is")
    cfg = common_args(args, "dab_detr")
    cfg.update(
        num_classes=hardcoded_num_classes(args),
        dropout=float(args.get("dropout", 0.0)),
        # Older DAB-DETR args lack this; the PReLU slope key tells.
        activation=args.get("transformer_activation", _dab_activation_from_keys(state)),
        pre_norm=bool(args.get("pre_norm", False)),
        pe_temperature_h=float(args.get("pe_temperatureH", 20)),
        pe_temperature_w=float(args.get("pe_temperatureW", 20)),
        num_patterns=int(args.get("num_patterns", 0)),
        random_refpoints_xy=bool(args.get("random_refpoints_xy", False)),
        cls_loss_coef=float(args.get("cls_loss_coef", 1.0)),
        bbox_loss_coef=float(args.get("bbox_loss_coef", 5.0)),
        giou_loss_coef=float(args.get("giou_loss_coef", 2.0)),
        set_cost_class=float(args.get("set_cost_class", 2.0)),
        set_cost_bbox=float(args.get("set_cost_bbox", 5.0)),
        set_cost_giou=float(args.get("set_cost_giou", 2.0)),
        focal_alpha=float(args.get("focal_alpha", 0.25)),
        **_dab_structure(state),
    )
    return cfg


def _dab_from_shapes(state: State, nheads: int) -> Dict[str, Any]:
    cfg = common_shapes(state, "input_proj.weight")
    cfg.update(
        num_queries=int(state["refpoint_embed.weight"].shape[0]),
        num_classes=int(state["class_embed.weight"].shape[0]),
        activation=_dab_activation_from_keys(state),
        pre_norm="transformer.encoder.norm.weight" in state,
        num_patterns=int(state["transformer.patterns.weight"].shape[0]) if "transformer.patterns.weight" in state else 0,
        nheads=nheads,
        **_dab_structure(state),
    )
    return cfg


OFFICIAL_FAMILIES.register("dab_detr")(
    FamilySpec(
        "dab_detr",
        "refpoint_embed.weight + transformer.decoder.layers.*.ca_qpos_sine_proj",
        _dab_matches,
        _dab_from_args,
        _dab_from_shapes,
        shape_fields=("hidden_dim", "num_queries", "enc_layers", "dec_layers", "dim_feedforward", "num_patterns"),
    )
)


# ---------------------------------------------------------------- DETR


def _detr_matches(state: State) -> bool:
    q = state.get("query_embed.weight")
    norm = state.get("transformer.decoder.norm.weight")
    return (
        q is not None and q.dim() == 2 and (norm is None or q.shape[1] == norm.shape[0])
        and any(k.startswith("transformer.decoder.layers.") and ".multihead_attn." in k for k in state)
    )


def _detr_from_args(args: Args, state: State) -> Dict[str, Any]:
    cfg = common_args(args, "detr", learned_ok=True)
    cfg.update(
        num_classes=hardcoded_num_classes(args),
        pre_norm=bool(args.get("pre_norm", False)),
        position_embedding=position_embedding_arg(args, learned_ok=True),
        cost_class=float(args.get("set_cost_class", 1.0)),
        cost_bbox=float(args.get("set_cost_bbox", 5.0)),
        cost_giou=float(args.get("set_cost_giou", 2.0)),
        bbox_loss_coef=float(args.get("bbox_loss_coef", 5.0)),
        giou_loss_coef=float(args.get("giou_loss_coef", 2.0)),
        eos_coef=float(args.get("eos_coef", 0.1)),
    )
    return cfg


def _detr_from_shapes(state: State, nheads: int) -> Dict[str, Any]:
    cfg = common_shapes(state, "input_proj.weight")
    cfg.update(
        num_queries=int(state["query_embed.weight"].shape[0]),
        num_classes=int(state["class_embed.weight"].shape[0]) - 1,  # last column = no-object
        pre_norm="transformer.encoder.norm.weight" in state,
        position_embedding="learned" if "backbone.1.row_embed.weight" in state else "sine",
        nheads=nheads,
    )
    return cfg


# ---------------------------------------------------------------- Deformable DETR

_DINO_ONLY = ("transformer.tgt_embed.weight", "label_enc.weight")


def _is_dino(state: State) -> bool:
    if "backbone.0.encoder.encoder.embeddings.position_embeddings" in state:
        return False  # RF-DETR (its two-stage heads share DINO's names)
    return any(k in state for k in _DINO_ONLY) or any(k.startswith("transformer.enc_out_class_embed.") for k in state)


def _deformable_matches(state: State) -> bool:
    level = state.get("transformer.level_embed")
    q = state.get("query_embed.weight")
    if level is None or _is_dino(state) or "refpoint_embed.weight" in state:
        return False
    single_stage = q is not None and q.dim() == 2 and q.shape[1] == 2 * level.shape[1]
    return single_stage or "transformer.enc_output.weight" in state


def _points_from_shapes(state: State, key: str, levels: int, heads: int) -> int:
    """MSDeformAttn's attention_weights has heads*levels*points rows."""
    rows = int(state[key].shape[0])
    if rows % (heads * levels):
        raise OfficialCheckpointError(f"{key} has {rows} rows, not a multiple of {heads} heads x {levels} levels: the checkpoint needs its args")
    return rows // (heads * levels)


def _deformable_common_shapes(state: State, nheads: int) -> Dict[str, Any]:
    cfg = common_shapes(state, "input_proj.0.0.weight")
    levels = int(state["transformer.level_embed"].shape[0])
    cfg.update(
        num_feature_levels=levels,
        nheads=nheads,
        enc_n_points=_points_from_shapes(state, "transformer.encoder.layers.0.self_attn.attention_weights.weight", levels, nheads),
        dec_n_points=_points_from_shapes(state, "transformer.decoder.layers.0.cross_attn.attention_weights.weight", levels, nheads),
    )
    return cfg


def _deformable_from_args(args: Args, state: State) -> Dict[str, Any]:
    cfg = common_args(args, "deformable_detr", learned_ok=True)
    scale = float(args.get("position_embedding_scale", 2 * 3.141592653589793))
    if abs(scale - 2 * 3.141592653589793) > 1e-6:
        raise OfficialCheckpointError(f"position_embedding_scale {scale} is not supported; edgedet uses 2*pi")
    cfg.update(
        num_classes=hardcoded_num_classes(args),
        num_feature_levels=int(require(args, "num_feature_levels")),
        enc_n_points=int(require(args, "enc_n_points")),
        dec_n_points=int(require(args, "dec_n_points")),
        with_box_refine=bool(args.get("with_box_refine", False)),
        two_stage=bool(args.get("two_stage", False)),
        position_embedding=position_embedding_arg(args, learned_ok=True),
        cost_class=float(args.get("set_cost_class", 2.0)),
        cost_bbox=float(args.get("set_cost_bbox", 5.0)),
        cost_giou=float(args.get("set_cost_giou", 2.0)),
        cls_loss_coef=float(args.get("cls_loss_coef", 2.0)),
        bbox_loss_coef=float(args.get("bbox_loss_coef", 5.0)),
        giou_loss_coef=float(args.get("giou_loss_coef", 2.0)),
        focal_alpha=float(args.get("focal_alpha", 0.25)),
    )
    return cfg


def _deformable_from_shapes(state: State, nheads: int) -> Dict[str, Any]:
    cfg = _deformable_common_shapes(state, nheads)
    two_stage = "transformer.enc_output.weight" in state
    cfg.update(
        num_classes=int(state["class_embed.0.weight"].shape[0]),
        two_stage=two_stage,
        with_box_refine="transformer.decoder.bbox_embed.0.layers.0.weight" in state,
        position_embedding="learned" if "backbone.1.row_embed.weight" in state else "sine",
    )
    if not two_stage:  # two-stage picks top-k encoder tokens: the count is not in any shape
        cfg["num_queries"] = int(state["query_embed.weight"].shape[0])
    return cfg


# ---------------------------------------------------------------- DINO

# Official DINO args edgedet does not implement, with the value it supports.
_DINO_FIXED = {
    "transformer_activation": "relu",
    "decoder_sa_type": "sa",
    "decoder_module_seq": ["sa", "ca", "ffn"],
    "num_patterns": 0,
    "random_refpoints_xy": False,
    "two_stage_pat_embed": 0,
    "two_stage_add_query_num": 0,
    "two_stage_learn_wh": False,
    "use_deformable_box_attn": False,
    "add_channel_attention": False,
    "dec_layer_number": None,
    "pre_norm": False,
    "query_dim": 4,
    "use_detached_boxes_dec_out": False,
}


def _dino_shares(state: State) -> Dict[str, Any]:
    """Head sharing, seen as identical tensors under the per-layer / encoder names."""
    def same(a: str, b: str) -> bool:
        return a in state and b in state and torch.equal(state[a], state[b])

    last = count_indexed(state, "class_embed") - 1
    return {
        "dec_pred_class_embed_share": last == 0 or same("class_embed.0.weight", f"class_embed.{last}.weight"),
        "dec_pred_bbox_embed_share": last == 0 or same("bbox_embed.0.layers.0.weight", f"bbox_embed.{last}.layers.0.weight"),
        "two_stage_class_embed_share": same("class_embed.0.weight", "transformer.enc_out_class_embed.weight"),
        "two_stage_bbox_embed_share": same("bbox_embed.0.layers.0.weight", "transformer.enc_out_bbox_embed.layers.0.weight"),
    }


def _dino_from_args(args: Args, state: State) -> Dict[str, Any]:
    if args.get("modelname", "dino") != "dino":
        raise OfficialCheckpointError(f"DINO repository model '{args['modelname']}' is not supported; only 'dino' is")
    for key, supported in _DINO_FIXED.items():
        if key in args and args[key] != supported:
            raise OfficialCheckpointError(f"DINO option {key}={args[key]!r} is not supported by edgedet (only {supported!r})")
    cfg = common_args(args, "dino")
    levels = int(require(args, "num_feature_levels"))
    interm = list(args.get("return_interm_indices", range(5 - levels, 4)))
    if interm != list(range(5 - levels, 4)):
        raise OfficialCheckpointError(f"DINO return_interm_indices {interm} with {levels} levels is not supported (only the last {levels - 1} stages)")
    cfg.update(
        num_classes=int(require(args, "num_classes")),
        dropout=float(args.get("dropout", 0.0)),
        num_feature_levels=levels,
        enc_n_points=int(require(args, "enc_n_points")),
        dec_n_points=int(require(args, "dec_n_points")),
        pe_temperature_h=float(args.get("pe_temperatureH", 20)),
        pe_temperature_w=float(args.get("pe_temperatureW", 20)),
        two_stage=str(args.get("two_stage_type", "standard")),
        embed_init_tgt=bool(args.get("embed_init_tgt", True)),
        dn_number=int(args.get("dn_number", 100)) if args.get("use_dn", True) else 0,
        dn_label_noise_ratio=float(args.get("dn_label_noise_ratio", 0.5)),
        dn_box_noise_scale=float(args.get("dn_box_noise_scale", 0.4)),
        dn_labelbook_size=int(state["label_enc.weight"].shape[0]) - 1 if "label_enc.weight" in state else args.get("dn_labelbook_size"),
        cls_loss_coef=float(args.get("cls_loss_coef", 1.0)),
        bbox_loss_coef=float(args.get("bbox_loss_coef", 5.0)),
        giou_loss_coef=float(args.get("giou_loss_coef", 2.0)),
        interm_loss_coef=float(args.get("interm_loss_coef", 1.0)),
        set_cost_class=float(args.get("set_cost_class", 2.0)),
        set_cost_bbox=float(args.get("set_cost_bbox", 5.0)),
        set_cost_giou=float(args.get("set_cost_giou", 2.0)),
        focal_alpha=float(args.get("focal_alpha", 0.25)),
        **_dino_shares(state),
    )
    return cfg


def _dino_from_shapes(state: State, nheads: int) -> Dict[str, Any]:
    cfg = _deformable_common_shapes(state, nheads)
    cfg.update(
        num_classes=int(state["class_embed.0.weight"].shape[0]),
        embed_init_tgt="transformer.tgt_embed.weight" in state,
        **_dino_shares(state),
    )
    if "label_enc.weight" in state:
        cfg["dn_labelbook_size"] = int(state["label_enc.weight"].shape[0]) - 1
    if "transformer.tgt_embed.weight" in state:
        cfg["num_queries"] = int(state["transformer.tgt_embed.weight"].shape[0])
    return cfg


_DEFORMABLE_SHAPE_FIELDS = ("hidden_dim", "num_queries", "enc_layers", "dec_layers", "dim_feedforward", "num_feature_levels")
for _spec in (
    FamilySpec("detr", "query_embed.weight [Q, d] + transformer.decoder.layers.*.multihead_attn", _detr_matches, _detr_from_args,
               _detr_from_shapes, shape_fields=("hidden_dim", "num_queries", "enc_layers", "dec_layers", "dim_feedforward", "pre_norm")),
    FamilySpec("deformable_detr", "transformer.level_embed + query_embed.weight [Q, 2d] (or two-stage transformer.enc_output)",
               _deformable_matches, _deformable_from_args, _deformable_from_shapes,
               shape_fields=_DEFORMABLE_SHAPE_FIELDS + ("two_stage", "with_box_refine")),
    FamilySpec("dino", "transformer.tgt_embed / transformer.enc_out_class_embed / label_enc", _is_dino, _dino_from_args,
               _dino_from_shapes, shape_fields=_DEFORMABLE_SHAPE_FIELDS + ("embed_init_tgt", "dn_labelbook_size")),
):
    OFFICIAL_FAMILIES.register(_spec.name)(_spec)
