"""RF-DETR release / training checkpoints (roboflow/rf-detr) -> the `rfdetr` family.

Files: `torch.save({'model': LWDETR.state_dict(), 'args': ..., ...})` — `args` a dict or an
argparse.Namespace (older engine.py), newer files also `model_config` (the pydantic model config;
training files carry only training settings in `args`, so the architecture comes from
`model_config` there). Lightning files (`state_dict` with a `model.` prefix) are read too.

The architecture: the named released config (`config="rfdetr_small"`) when given, else the file's
args / model_config, else the released size whose shapes fit the weights. Whatever it is, it is
checked against the weights (patch size, position table, ViT width, decoder depth, heads x points,
queries x groups, classes) and a mismatch is a one-line error naming both sides. An empty
`_kp_active_mask` buffer (rfdetr >= 1.6, keypoints off) carries nothing and is dropped; a
keypoint / segmentation checkpoint is refused.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from torch import Tensor, nn

from edgedet.checkpoints.official_spec import OFFICIAL_FAMILIES, FamilySpec, OfficialCheckpointError, count_indexed
from edgedet.checkpoints.safe_load import safe_torch_load

log = logging.getLogger(__name__)

_POS = "backbone.0.encoder.encoder.embeddings.position_embeddings"
_PATCH = "backbone.0.encoder.encoder.embeddings.patch_embeddings.projection.weight"
# official arg -> our field (same name unless listed); num_classes gets + 1 (the head's columns)
_SAME = ("encoder", "out_feature_indexes", "window_block_indexes", "patch_size", "num_windows", "positional_encoding_size",
         "resolution", "projector_scale", "layer_norm", "hidden_dim", "dec_layers", "sa_nheads", "ca_nheads",
         "dec_n_points", "dim_feedforward", "dropout", "drop_path", "num_queries", "num_select", "group_detr",
         "two_stage", "bbox_reparam", "lite_refpoint_refine", "aux_loss", "cls_loss_coef", "bbox_loss_coef",
         "giou_loss_coef", "set_cost_class", "set_cost_bbox", "set_cost_giou", "focal_alpha", "lr_vit_layer_decay",
         "lr_component_decay")
# switches whose non-default value builds something this family does not have
_UNSUPPORTED = {"segmentation_head": False, "use_grouppose_keypoints": False, "dual_projector": False,
                "num_decoder_registers": 0, "rms_norm": False, "use_cls_token": False, "decoder_norm": "LN",
                "backbone_lora": False}
# what a released size fixes and the weights show
_ARCH = ("encoder", "patch_size", "positional_encoding_size", "hidden_dim", "dec_layers", "projector_scale",
         "num_windows", "out_feature_indexes", "sa_nheads", "ca_nheads", "dec_n_points")


def is_rfdetr_state(state: Mapping[str, Tensor]) -> bool:
    return _POS in state and "query_feat.weight" in state and "refpoint_embed.weight" in state


def is_rfdetr_config(name: str) -> bool:
    from edgedet.models.rfdetr import RFDETR_CONFIGS

    return name in RFDETR_CONFIGS


def read_rfdetr_checkpoint(path: Union[str, Path]) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """-> (official state_dict, the architecture args: model_config overlaid by args)."""
    p = Path(path)
    obj = safe_torch_load(p)
    if not isinstance(obj, Mapping):
        raise OfficialCheckpointError(f"{p} holds a {type(obj).__name__}, not an RF-DETR checkpoint dict")
    if isinstance(obj.get("model"), Mapping):
        state = dict(obj["model"])
    elif isinstance(obj.get("state_dict"), Mapping):  # Lightning: the LWDETR under `model.`
        state = {k[len("model."):]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
    else:
        raise OfficialCheckpointError(f"{p} has no 'model' state_dict (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    args: Dict[str, Any] = {}
    for part in (obj.get("model_config"), obj.get("args")):
        if isinstance(part, argparse.Namespace):
            part = vars(part)
        if isinstance(part, Mapping):
            args.update({k: v for k, v in part.items() if v is not None or k == "window_block_indexes"})
    if not is_rfdetr_state(state):
        raise OfficialCheckpointError(f"{p} is not an RF-DETR checkpoint (no {_POS} / query_feat / refpoint_embed)")
    return state, args


def weights_facts(state: Mapping[str, Tensor]) -> Dict[str, Any]:
    """What the tensors show about the architecture."""
    pos, patch = state[_POS], state[_PATCH]
    side = int(round((pos.shape[1] - 1) ** 0.5))
    levels = count_indexed(state, "backbone.0.projector.stages")
    facts = {"vit_width": int(pos.shape[2]), "patch_size": int(patch.shape[-1]), "positional_encoding_size": side,
             "hidden_dim": int(state["class_embed.weight"].shape[1]), "num_classes": int(state["class_embed.weight"].shape[0]),
             "dec_layers": count_indexed(state, "transformer.decoder.layers"), "levels": levels,
             "query_rows": int(state["query_feat.weight"].shape[0]), "groups": count_indexed(state, "transformer.enc_output"),
             "heads_x_points": int(state["transformer.decoder.layers.0.cross_attn.attention_weights.weight"].shape[0]),
             "dim_feedforward": int(state["transformer.decoder.layers.0.linear1.weight"].shape[0]),
             "vit_layers": count_indexed(state, "backbone.0.encoder.encoder.encoder.layer")}
    return facts


def _implied(fields: Mapping[str, Any]) -> Dict[str, Any]:
    from edgedet.models.rfdetr import ENCODERS

    return {"vit_width": ENCODERS.get(fields["encoder"], (None,))[0], "patch_size": fields["patch_size"],
            "positional_encoding_size": fields["positional_encoding_size"], "hidden_dim": fields["hidden_dim"],
            "dec_layers": fields["dec_layers"], "levels": len(fields["projector_scale"]),
            "query_rows": fields["num_queries"] * fields["group_detr"], "groups": fields["group_detr"],
            "heads_x_points": fields["ca_nheads"] * len(fields["projector_scale"]) * fields["dec_n_points"],
            "dim_feedforward": fields["dim_feedforward"]}


def _mismatches(fields: Mapping[str, Any], facts: Mapping[str, Any]) -> Dict[str, Tuple[Any, Any]]:
    return {k: (v, facts[k]) for k, v in _implied(fields).items() if facts.get(k) != v}


def released_size_of(facts: Mapping[str, Any]) -> Optional[str]:
    """The released config whose architecture fits the weights (queries, groups and classes aside)."""
    from edgedet.models.rfdetr import RFDETR_CONFIGS, rfdetr_config
    from edgedet.config import to_dict

    arch = ("vit_width", "patch_size", "positional_encoding_size", "hidden_dim", "dec_layers", "levels", "heads_x_points")
    for name in RFDETR_CONFIGS:
        implied = _implied(to_dict(rfdetr_config(name)))
        if all(implied[k] == facts[k] for k in arch):
            return name
    return None


def fields_from_args(args: Mapping[str, Any]) -> Dict[str, Any]:
    bad = {k: args[k] for k, ok in _UNSUPPORTED.items() if k in args and args[k] not in (ok, None) and args[k] != []}
    if bad:
        raise OfficialCheckpointError(f"this RF-DETR checkpoint uses {', '.join(f'{k}={v!r}' for k, v in bad.items())}; "
                                      "edgedet's rfdetr family loads the detection models only (no segmentation/keypoint heads)")
    if "registers" in str(args.get("encoder", "")):
        raise OfficialCheckpointError(f"RF-DETR encoder '{args['encoder']}' (with register tokens) is not supported")
    fields = {k: args[k] for k in _SAME if k in args}
    if "num_classes" in args:
        fields["num_classes"] = int(args["num_classes"]) + 1
    if args.get("lr") and args.get("lr_encoder"):
        fields["lr_encoder_mult"] = float(args["lr_encoder"]) / float(args["lr"])
    if "projector_scale" in fields:
        fields["projector_scale"] = list(fields["projector_scale"])
    return fields


def rfdetr_config_for_checkpoint(state: Mapping[str, Tensor], args: Optional[Mapping[str, Any]], config: Optional[str] = None,
                                 overrides: Optional[Mapping[str, Any]] = None, source: str = "checkpoint"):
    """Our RFDETRConfig for an official state_dict: the named config, else args, else the fitting released size."""
    from edgedet.config import from_dict, to_dict
    from edgedet.models.rfdetr import RFDETR_CONFIGS, rfdetr_config

    facts = weights_facts(state)
    size = released_size_of(facts)
    from_file = fields_from_args(args or {})
    if config is not None:
        if config not in RFDETR_CONFIGS:
            raise OfficialCheckpointError(f"unknown RF-DETR config '{config}'; released: {', '.join(RFDETR_CONFIGS)}")
        fields = to_dict(rfdetr_config(config))
        wrong = {k: (fields[k], from_file[k]) for k in _ARCH if k in from_file and from_file[k] != fields[k]}
        if wrong:
            raise OfficialCheckpointError(
                f"{source} is an RF-DETR {size or 'model'} checkpoint, not {config}: its args have "
                + ", ".join(f"{k}={b!r} where {config} has {a!r}" for k, (a, b) in wrong.items())
                + f"; pass config='{size}'" * bool(size) + " or drop config (the file's args say its size)")
        # the file's training-time settings (queries, groups, classes, loss weights) stay the file's
        fields.update({k: v for k, v in from_file.items() if k not in _ARCH})
    else:
        base = size or "rfdetr_nano"
        fields = to_dict(rfdetr_config(base))
        fields.update(from_file)
        if not from_file:
            if size is None:
                raise OfficialCheckpointError(f"{source} carries no args and its shapes fit no released RF-DETR size "
                                              f"({facts}); name the config: config=NAME, one of {', '.join(RFDETR_CONFIGS)}")
            log.warning("%s carries no args: using the released %s architecture its shapes fit", source, size)
    # what the weights alone fix: classes, query rows and groups
    fields["num_classes"] = facts["num_classes"]
    fields["group_detr"] = facts["groups"]
    if facts["query_rows"] % facts["groups"] == 0 and fields.get("num_queries", 0) * facts["groups"] != facts["query_rows"]:
        fields["num_queries"] = facts["query_rows"] // facts["groups"]
    wrong = _mismatches(fields, facts)
    if wrong:
        what = config or "its args"
        raise OfficialCheckpointError(
            f"{source} does not fit {what}: " + ", ".join(f"{k} {a!r} in the config but {b!r} in the weights" for k, (a, b) in wrong.items())
            + (f"; the weights are RF-DETR {size}: pass config='{size}'" if size and size != config else ""))
    fields.update(dict(overrides or {}))
    fields["name"] = "rfdetr"
    from edgedet.registry import MODELS

    return from_dict(MODELS.meta("rfdetr")["config"], fields, "model")


def prepare_rfdetr_state(state: Dict[str, Tensor], source: str) -> Dict[str, Tensor]:
    kp = state.pop("_kp_active_mask", None)
    if kp is not None and kp.numel() > 0:
        raise OfficialCheckpointError(f"{source} is an RF-DETR keypoint model (non-empty _kp_active_mask); only detection "
                                      "checkpoints load into the rfdetr family")
    return state


def load_rfdetr_official(path: Union[str, Path], config: Optional[str] = None,
                         overrides: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """Build the rfdetr model for an official RF-DETR checkpoint and load every tensor; eval mode."""
    from edgedet.checkpoints.official_state_dict import load_official_state_dict
    from edgedet.models import create_model_from_config

    state, args = read_rfdetr_checkpoint(path)
    source = f"checkpoint {path}"
    cfg = rfdetr_config_for_checkpoint(state, args, config, overrides, source)
    model = create_model_from_config(cfg)
    load_official_state_dict(model, prepare_rfdetr_state(state, source), source)
    log.info("loaded official RF-DETR checkpoint %s (%d tensors)", path, len(state))
    return model.eval()


def _from_args(args: Mapping[str, Any], state: Mapping[str, Tensor]) -> Dict[str, Any]:
    from edgedet.config import to_dict

    return to_dict(rfdetr_config_for_checkpoint(state, args))


OFFICIAL_FAMILIES.register("rfdetr")(FamilySpec(
    "rfdetr", "backbone.0.encoder.encoder.embeddings.position_embeddings + query_feat + refpoint_embed (roboflow/rf-detr)",
    is_rfdetr_state, _from_args, lambda state, nheads: _from_args({}, state)))


__all__ = ["load_rfdetr_official", "read_rfdetr_checkpoint", "rfdetr_config_for_checkpoint", "is_rfdetr_state",
           "is_rfdetr_config", "weights_facts", "released_size_of", "prepare_rfdetr_state"]
