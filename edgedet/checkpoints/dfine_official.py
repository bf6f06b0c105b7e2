"""D-FINE and DEIM release checkpoints (Peterande/D-FINE, ShihuaHuang95/DEIM) -> the `dfine` family.

These checkpoints carry no config, so the user names the official YAML file the model was built
from (`dfine_hgnetv2_n_coco`, `deim_hgnetv2_s_coco`, ...; `dfine_hgnetv2_n` means the COCO one)
plus the official tools' `-u KEY=VALUE` overrides (`HybridEncoder.hidden_dim=64`,
`DFINETransformer.num_points=[4,2]`, `num_classes=5`, ...). The released configurations are built
in below as the merged YAML the official `YAMLConfig` produces (model sections only).

Reading: `checkpoint['ema']['module']` when present, else `checkpoint['model']` (what the official
export and tuning code load); `weights_only=True`. Facts kept: `decoder.reg_scale` is saved as an
int64 Parameter (`reg_scale: 4` in the YAML), `decoder.decoder.up/reg_scale` are the same tensors
as `decoder.up/reg_scale`, `decoder.anchors`/`valid_mask` exist when the model was built with an
`eval_spatial_size` (we derive anchors from each input's size, so they are dropped).
"""
from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from edgedet.checkpoints.official_spec import OfficialCheckpointError
from edgedet.checkpoints.rtdetr_official import parse_updates
from edgedet.checkpoints.safe_load import safe_torch_load
from edgedet.config import from_dict

log = logging.getLogger(__name__)

# configs/dfine/include/dfine_hgnetv2.yml (model sections) + configs/dataset/coco_detection.yml
_BASE: Dict[str, Any] = {
    "num_classes": 80,
    "remap_mscoco_category": True,
    "eval_spatial_size": [640, 640],
    "HGNetv2": {"name": "B0", "use_lab": False, "return_idx": [1, 2, 3], "freeze_stem_only": True,
                "freeze_at": 0, "freeze_norm": True, "pretrained": True},
    "HybridEncoder": {"in_channels": [512, 1024, 2048], "feat_strides": [8, 16, 32], "hidden_dim": 256,
                      "use_encoder_idx": [2], "num_encoder_layers": 1, "nhead": 8, "dim_feedforward": 1024,
                      "dropout": 0.0, "enc_act": "gelu", "expansion": 1.0, "depth_mult": 1.0, "act": "silu",
                      "pe_temperature": 10000},
    "DFINETransformer": {"feat_channels": [256, 256, 256], "feat_strides": [8, 16, 32], "hidden_dim": 256,
                         "num_levels": 3, "num_layers": 6, "eval_idx": -1, "num_queries": 300, "num_denoising": 100,
                         "label_noise_ratio": 0.5, "box_noise_scale": 1.0, "reg_max": 32, "reg_scale": 4,
                         "layer_scale": 1, "num_points": [3, 6, 3], "cross_attn_method": "default",
                         "query_select_method": "default", "nhead": 8, "dim_feedforward": 1024, "dropout": 0.0,
                         "activation": "relu", "mlp_act": "relu", "learn_query_content": False, "eps": 0.01},
    "DFINEPostProcessor": {"num_top_queries": 300},
}

# configs/dfine/dfine_hgnetv2_{n,s,m,l,x}_coco.yml (the same model sections in obj365/obj2coco/custom)
_SIZES: Dict[str, Dict[str, Any]] = {
    "n": {"HGNetv2": {"name": "B0", "return_idx": [2, 3], "freeze_at": -1, "freeze_norm": False, "use_lab": True},
          "HybridEncoder": {"in_channels": [512, 1024], "feat_strides": [16, 32], "hidden_dim": 128, "use_encoder_idx": [1],
                            "dim_feedforward": 512, "expansion": 0.34, "depth_mult": 0.5},
          "DFINETransformer": {"feat_channels": [128, 128], "feat_strides": [16, 32], "hidden_dim": 128,
                               "dim_feedforward": 512, "num_levels": 2, "num_layers": 3, "eval_idx": -1, "num_points": [6, 6]}},
    "s": {"HGNetv2": {"name": "B0", "return_idx": [1, 2, 3], "freeze_at": -1, "freeze_norm": False, "use_lab": True},
          "DFINETransformer": {"num_layers": 3, "eval_idx": -1},
          "HybridEncoder": {"in_channels": [256, 512, 1024], "hidden_dim": 256, "depth_mult": 0.34, "expansion": 0.5}},
    "m": {"HGNetv2": {"name": "B2", "return_idx": [1, 2, 3], "freeze_at": -1, "freeze_norm": False, "use_lab": True},
          "DFINETransformer": {"num_layers": 4, "eval_idx": -1},
          "HybridEncoder": {"in_channels": [384, 768, 1536], "hidden_dim": 256, "depth_mult": 0.67}},
    "l": {"HGNetv2": {"name": "B4", "return_idx": [1, 2, 3], "freeze_stem_only": True, "freeze_at": 0, "freeze_norm": True}},
    "x": {"HGNetv2": {"name": "B5", "return_idx": [1, 2, 3], "freeze_stem_only": True, "freeze_at": 0, "freeze_norm": True},
          "HybridEncoder": {"hidden_dim": 384, "dim_feedforward": 2048},
          "DFINETransformer": {"feat_channels": [384, 384, 384], "reg_scale": 8}},
}
# configs/dataset/*.yml
_DATASETS = {"coco": (80, True), "obj2coco": (80, True), "obj365": (366, False), "custom": (777, False)}
# DEIM's configs/base/deim.yml on top of its copy of the D-FINE configs
_DEIM = {"HGNetv2": {"freeze_at": -1, "freeze_norm": False}, "DFINETransformer": {"activation": "silu", "mlp_act": "silu"}}


def _merge(dst: Dict[str, Any], src: Mapping[str, Any]) -> Dict[str, Any]:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)
    return dst


_IGNORED_SECTIONS = ("DFINE", "DEIM", "DFINECriterion", "DEIMCriterion")
_IGNORED_KEYS = ("use_focal_loss", "HGNetv2.local_model_dir")


def _build_table() -> Dict[str, Dict[str, Any]]:
    table = {}
    for size, over in _SIZES.items():
        for ds, (nc, remap) in _DATASETS.items():
            cfg = _merge(_merge(copy.deepcopy(_BASE), over), {"num_classes": nc, "remap_mscoco_category": remap})
            table[f"dfine_hgnetv2_{size}_{ds}"] = cfg
        table[f"dfine_hgnetv2_{size}"] = table[f"dfine_hgnetv2_{size}_coco"]
        table[f"deim_hgnetv2_{size}_coco"] = _merge(copy.deepcopy(table[f"dfine_hgnetv2_{size}_coco"]), _DEIM)
        table[f"deim_hgnetv2_{size}"] = table[f"deim_hgnetv2_{size}_coco"]
    return table


DFINE_OFFICIAL_CONFIGS = _build_table()


def dfine_config_names() -> List[str]:
    return sorted(DFINE_OFFICIAL_CONFIGS)


def is_dfine_config(name: str) -> bool:
    return name.removesuffix(".yml") in DFINE_OFFICIAL_CONFIGS or name.startswith(("dfine_", "deim_"))


def resolve_official_config(config: str, updates: Sequence[str] = ()) -> Dict[str, Any]:
    """The merged official config (model sections) for a built-in name plus `-u` updates."""
    name = config.removesuffix(".yml")
    if name not in DFINE_OFFICIAL_CONFIGS:
        raise OfficialCheckpointError(f"unknown D-FINE/DEIM config '{config}'; built in: {', '.join(dfine_config_names())}")
    cfg = copy.deepcopy(DFINE_OFFICIAL_CONFIGS[name])
    for key, value in parse_updates(updates).items():
        section, _, leaf = key.rpartition(".")
        if section in _IGNORED_SECTIONS or key in _IGNORED_KEYS:
            continue  # training-only or module-registry keys: no effect on the weights' layout
        target = cfg if not section else cfg.get(section)
        if not isinstance(target, dict) or "." in section:
            raise OfficialCheckpointError(f"unknown D-FINE update key '{key}'; model sections: "
                                          f"{', '.join(k for k, v in cfg.items() if isinstance(v, dict))}, or a top-level "
                                          f"key ({', '.join(k for k, v in cfg.items() if not isinstance(v, dict))})")
        target[leaf] = value
    return cfg


def _points(value: Any, levels: int) -> List[int]:
    return [int(p) for p in value] if isinstance(value, (list, tuple)) else [int(value)] * levels


def official_to_model_fields(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """Merged official config -> DFINEConfig fields (errors name what edgedet cannot build)."""
    bb, enc, dec = cfg["HGNetv2"], cfg["HybridEncoder"], cfg["DFINETransformer"]
    if int(dec.get("layer_scale", 1)) != 1:
        raise OfficialCheckpointError("DFINETransformer.layer_scale != 1 (wide auxiliary layers) is not supported; no released config uses it")
    if dec.get("query_select_method", "default") != "default":
        raise OfficialCheckpointError(f"DFINETransformer.query_select_method={dec['query_select_method']} is not supported; only 'default'")
    levels = int(dec["num_levels"])
    return {
        "name": "dfine",
        "num_classes": int(cfg["num_classes"]),
        "backbone": bb["name"], "backbone_use_lab": bool(bb.get("use_lab", False)),
        "backbone_return_idx": list(bb["return_idx"]), "backbone_freeze_at": int(bb.get("freeze_at", 0)),
        "backbone_freeze_stem_only": bool(bb.get("freeze_stem_only", True)),
        "backbone_frozen_bn": bool(bb.get("freeze_norm", True)),
        "encoder_hidden_dim": int(enc["hidden_dim"]), "encoder_nhead": int(enc["nhead"]),
        "encoder_dim_feedforward": int(enc["dim_feedforward"]), "encoder_dropout": float(enc.get("dropout", 0.0)),
        "encoder_act": enc.get("enc_act", "gelu"), "use_encoder_idx": list(enc["use_encoder_idx"]),
        "num_encoder_layers": int(enc["num_encoder_layers"]), "pe_temperature": float(enc.get("pe_temperature", 10000)),
        "expansion": float(enc["expansion"]), "depth_mult": float(enc["depth_mult"]),
        "hidden_dim": int(dec["hidden_dim"]), "feat_channels": list(dec["feat_channels"]), "num_levels": levels,
        "num_queries": int(dec["num_queries"]), "nheads": int(dec["nhead"]), "dec_layers": int(dec["num_layers"]),
        "dim_feedforward": int(dec["dim_feedforward"]), "dropout": float(dec.get("dropout", 0.0)),
        "activation": dec.get("activation", "relu"), "mlp_act": dec.get("mlp_act", "relu"),
        "num_points": _points(dec["num_points"], levels), "eval_idx": int(dec["eval_idx"]),
        "cross_attn_method": dec.get("cross_attn_method", "default"),
        "reg_max": int(dec["reg_max"]), "reg_scale": float(dec["reg_scale"]),
        "learn_query_content": bool(dec.get("learn_query_content", False)), "anchor_eps": float(dec.get("eps", 0.01)),
        "num_denoising": int(dec["num_denoising"]), "label_noise_ratio": float(dec["label_noise_ratio"]),
        "box_noise_scale": float(dec["box_noise_scale"]),
        "num_top_queries": int(cfg.get("DFINEPostProcessor", {}).get("num_top_queries", 300)),
    }


def _check_structure(fields: Mapping[str, Any], cfg: Mapping[str, Any]) -> None:
    from edgedet.nn.hgnetv2 import HGNETV2_STRIDES, hgnetv2_out_channels

    enc, dec = cfg["HybridEncoder"], cfg["DFINETransformer"]
    chans = hgnetv2_out_channels(fields["backbone"], fields["backbone_return_idx"])
    strides = [HGNETV2_STRIDES[i] for i in fields["backbone_return_idx"]]
    wrong = []
    if list(enc["in_channels"]) != chans:
        wrong.append(f"HybridEncoder.in_channels={list(enc['in_channels'])} (HGNetv2 {fields['backbone']} gives {chans})")
    if list(enc["feat_strides"]) != strides:
        wrong.append(f"HybridEncoder.feat_strides={list(enc['feat_strides'])} (return_idx gives {strides})")
    if list(dec["feat_channels"]) != [fields["encoder_hidden_dim"]] * len(chans):
        wrong.append(f"DFINETransformer.feat_channels={list(dec['feat_channels'])} (encoder outputs {len(chans)} x {fields['encoder_hidden_dim']})")
    if list(dec["feat_strides"])[: len(strides)] != strides:
        wrong.append(f"DFINETransformer.feat_strides={list(dec['feat_strides'])} (encoder strides {strides})")
    if wrong:
        raise OfficialCheckpointError("inconsistent D-FINE config: " + "; ".join(wrong))


def weights_facts(state: Mapping[str, Tensor]) -> Dict[str, Any]:
    """What the tensors tell: widths, layer and class counts, point counts from num_points_scale."""
    facts: Dict[str, Any] = {}
    if "decoder.enc_score_head.weight" in state:
        facts["num_classes"], facts["hidden_dim"] = (int(s) for s in state["decoder.enc_score_head.weight"].shape)
    layers = {int(m.group(1)) for k in state for m in [re.match(r"decoder\.decoder\.layers\.(\d+)\.", k)] if m}
    if layers:
        facts["dec_layers"] = max(layers) + 1
    nps = state.get("decoder.decoder.layers.0.cross_attn.num_points_scale")
    if nps is not None:
        counts, i, vals = [], 0, nps.float().tolist()
        while i < len(vals):
            n = int(round(1 / vals[i])) if vals[i] > 0 else 0
            if n <= 0 or i + n > len(vals):
                break
            counts.append(n)
            i += n
        facts["num_points"] = counts
    if "encoder.input_proj.0.conv.weight" in state:
        facts["encoder_hidden_dim"] = int(state["encoder.input_proj.0.conv.weight"].shape[0])
    if "backbone.stem.stem1.conv.weight" in state:
        facts["stem_width"] = int(state["backbone.stem.stem1.conv.weight"].shape[0])
    return facts


def _check_against_weights(fields: Mapping[str, Any], state: Mapping[str, Tensor], config: str) -> None:
    from edgedet.nn.hgnetv2 import HGNETV2_ARCHS

    facts = weights_facts(state)
    expect = {k: fields[k] for k in ("num_classes", "hidden_dim", "dec_layers", "num_points", "encoder_hidden_dim")}
    expect["stem_width"] = HGNETV2_ARCHS[fields["backbone"]][0][1]
    wrong = [f"{k}={expect[k]} (weights: {facts[k]})" for k in expect if k in facts and facts[k] != expect[k]]
    if wrong:
        raise OfficialCheckpointError(
            f"--config {config} (with the given updates) disagrees with the checkpoint: {', '.join(wrong)}; "
            "pick the config the checkpoint was trained with or add --update KEY=VALUE (e.g. --update num_classes=N)")


def official_model_config(config: str, updates: Sequence[str] = ()):
    """DFINEConfig of an official config name + updates (e.g. to build a released architecture untrained)."""
    from edgedet.models.dfine import DFINEConfig

    resolved = resolve_official_config(config, updates)
    fields = official_to_model_fields(resolved)
    _check_structure(fields, resolved)
    return from_dict(DFINEConfig, fields, "model")


def read_dfine_checkpoint(path: Union[str, Path]) -> Dict[str, Tensor]:
    """-> the state_dict: checkpoint['ema']['module'] when present, else checkpoint['model'] (or a bare state_dict)."""
    p = Path(path)
    obj = safe_torch_load(p)
    if not isinstance(obj, Mapping):
        raise OfficialCheckpointError(f"{p} holds a {type(obj).__name__}, not a checkpoint dict")
    ema = obj.get("ema")
    if isinstance(ema, Mapping) and isinstance(ema.get("module"), Mapping):
        state = ema["module"]
    elif isinstance(obj.get("model"), Mapping):
        state = obj["model"]
    elif obj and all(isinstance(v, Tensor) for v in obj.values()):
        state = obj
    else:
        raise OfficialCheckpointError(f"{p} has neither 'ema'.'module' nor 'model' (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def prepare_dfine_state(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """int64 reg_scale -> float32 (same value; W(n) and distance2bbox promote it to float32 anyway);
    fixed-size anchors/valid_mask (built from eval_spatial_size) dropped: ours follow each input."""
    out = dict(state)
    for k in ("decoder.anchors", "decoder.valid_mask"):
        if out.pop(k, None) is not None:
            log.info("dropped %s: edgedet derives anchors from each input's size", k)
    ties: Dict[int, Tensor] = {}
    for k in ("decoder.reg_scale", "decoder.decoder.reg_scale"):
        v = out.get(k)
        if v is not None and not v.is_floating_point():
            ident = id(v) if v.numel() == 0 else (v.untyped_storage().data_ptr(), v.storage_offset())
            out[k] = ties.setdefault(ident, v.to(torch.float32))
    return out


def load_dfine_official(path: Union[str, Path], config: str, updates: Sequence[str] = (),
                        overrides: Optional[Mapping[str, Any]] = None):
    """Build the `dfine` model for a D-FINE/DEIM checkpoint from its official config name + updates; eval mode."""
    return load_dfine_state(read_dfine_checkpoint(path), config, updates, overrides, f"checkpoint {path}")


def load_dfine_state(state: Mapping[str, Tensor], config: str, updates: Sequence[str] = (),
                     overrides: Optional[Mapping[str, Any]] = None, source: str = "checkpoint"):
    """`load_dfine_official` on a state_dict already read (official key names); eval mode."""
    from edgedet.checkpoints.official_state_dict import load_official_state_dict
    from edgedet.models import create_model_from_config
    from edgedet.models.dfine import DFINEConfig

    resolved = resolve_official_config(config, updates)
    fields = official_to_model_fields(resolved)
    _check_structure(fields, resolved)
    _check_against_weights(fields, state, config)
    if overrides:
        fields.update(overrides)
    model = create_model_from_config(from_dict(DFINEConfig, fields, "model"))
    load_official_state_dict(model, prepare_dfine_state(dict(state)), source)
    log.info("loaded %s %s as --config %s (%d tensors)", "DEIM" if config.startswith("deim") else "D-FINE",
             source, config, len(state))
    return model.eval()


# ---------------------------------------------------------------- released configs that fit a file


def _width(state: Mapping[str, Tensor], key: str) -> Optional[int]:
    return int(state[key].shape[0]) if key in state else None


def suggest_updates(name: str, state: Mapping[str, Tensor]) -> List[str]:
    """--update strings that make released config `name` say what the weights show (backbone must match)."""
    from edgedet.checkpoints.rtdetr_official import _yaml

    resolved = resolve_official_config(name)
    fields = official_to_model_fields(resolved)
    facts = weights_facts(state)
    from edgedet.nn.hgnetv2 import HGNETV2_ARCHS

    if facts.get("stem_width") != HGNETV2_ARCHS[fields["backbone"]][0][1]:
        raise OfficialCheckpointError(f"backbone stem width {facts.get('stem_width')} is not {name}'s")
    out = []
    levels = int(resolved["DFINETransformer"]["num_levels"])
    if facts.get("encoder_hidden_dim") not in (None, fields["encoder_hidden_dim"]):
        width = facts["encoder_hidden_dim"]
        out += [f"HybridEncoder.hidden_dim={width}", f"DFINETransformer.feat_channels={_yaml([width] * levels)}"]
    extra = {"encoder_dim_feedforward": _width(state, "encoder.encoder.0.layers.0.linear1.weight"),
             "dim_feedforward": _width(state, "decoder.decoder.layers.0.linear1.weight")}
    rows = _width(state, "decoder.decoder.layers.0.cross_attn.attention_weights.weight")
    if rows and facts.get("num_points"):
        extra["nheads"] = rows // sum(facts["num_points"])
    seen = {**facts, **{k: v for k, v in extra.items() if v is not None}}
    keys = {"encoder_dim_feedforward": "HybridEncoder.dim_feedforward", "hidden_dim": "DFINETransformer.hidden_dim",
            "dim_feedforward": "DFINETransformer.dim_feedforward", "nheads": "DFINETransformer.nhead",
            "dec_layers": "DFINETransformer.num_layers", "num_points": "DFINETransformer.num_points",
            "num_classes": "num_classes"}
    for field_name, update in keys.items():
        if field_name in seen and seen[field_name] != fields[field_name]:
            out.append(f"{update}={_yaml(seen[field_name])}")
    return out


def _distinct_configs() -> List[str]:
    """One name per distinct architecture: the COCO configs (other datasets change only the class count)."""
    coco = [n for n in dfine_config_names() if n.endswith("_coco")]
    return sorted(coco, key=lambda n: n.startswith("deim_"))  # same shapes: D-FINE named first


def _needs_config(*_: Any) -> Dict[str, Any]:
    raise OfficialCheckpointError("D-FINE/DEIM checkpoints carry no config: name the released one with --config NAME "
                                  "(e.g. dfine_hgnetv2_n_coco) and --update KEY=VALUE for what was changed")


def _register_released() -> None:
    from edgedet.checkpoints.official_spec import OFFICIAL_FAMILIES, FamilySpec
    from edgedet.checkpoints.released_configs import RELEASED_FAMILIES, ReleasedFamily

    OFFICIAL_FAMILIES.register("dfine")(FamilySpec(
        "dfine", "decoder.decoder.lqe_layers.* (Peterande/D-FINE, DEIM)",
        lambda state: any(k.startswith("decoder.decoder.lqe_layers.") for k in state), _needs_config, _needs_config))

    RELEASED_FAMILIES.register("dfine")(ReleasedFamily(
        "dfine", "D-FINE/DEIM", dfine_config_names, _distinct_configs, is_dfine_config, official_model_config,
        prepare_dfine_state, suggest_updates,
        "DFINETransformer.num_queries, HybridEncoder.nhead, and D-FINE vs DEIM (activations; deim_* for DEIM weights)"))


_register_released()
