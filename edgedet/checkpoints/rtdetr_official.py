"""RT-DETRv2 release checkpoints (lyuwenyu/RT-DETR): released configs, `-u KEY=VALUE` updates, checks.

These checkpoints carry no config, so the user names one of `RTDETR_CONFIGS` and may add the
official tools' override strings (`HybridEncoder.hidden_dim=64`,
`RTDETRTransformerv2.num_points=[4,3,2]`, `num_classes=5`, `eval_spatial_size=~`, ...; values
parsed as YAML, as `yaml_utils.parse_cli` does). The resolved official module kwargs map onto
`RTDETRConfig`; everything the weights can tell (depth, widths, layer counts, per-level
points, heads, class count, anchors) is checked against it and any disagreement is one
`OfficialCheckpointError` line naming each mismatch.
"""
from __future__ import annotations

import copy
import re
from typing import Any, Dict, List, Mapping, Sequence

import yaml
from torch import Tensor

from edgedet.checkpoints.official_spec import OFFICIAL_FAMILIES, FamilySpec, OfficialCheckpointError

_R50 = {  # configs/rtdetrv2/include/rtdetrv2_r50vd.yml + dataset/coco_detection.yml
    "num_classes": 80, "eval_spatial_size": [640, 640], "remap_mscoco_category": True,
    "PResNet": {"depth": 50, "variant": "d", "freeze_at": 0, "return_idx": [1, 2, 3], "num_stages": 4,
                "freeze_norm": True, "act": "relu"},
    "HybridEncoder": {"in_channels": [512, 1024, 2048], "feat_strides": [8, 16, 32], "hidden_dim": 256,
                      "use_encoder_idx": [2], "num_encoder_layers": 1, "nhead": 8, "dim_feedforward": 1024,
                      "dropout": 0.0, "enc_act": "gelu", "expansion": 1.0, "depth_mult": 1, "act": "silu",
                      "pe_temperature": 10000, "version": "v2"},
    "RTDETRTransformerv2": {"feat_channels": [256, 256, 256], "feat_strides": [8, 16, 32], "hidden_dim": 256,
                            "num_levels": 3, "num_layers": 6, "num_queries": 300, "num_denoising": 100,
                            "label_noise_ratio": 0.5, "box_noise_scale": 1.0, "eval_idx": -1, "num_points": [4, 4, 4],
                            "cross_attn_method": "default", "query_select_method": "default", "nhead": 8,
                            "dim_feedforward": 1024, "dropout": 0.0, "activation": "relu", "learn_query_content": False,
                            "eps": 0.01, "aux_loss": True},
    "RTDETRPostProcessor": {"num_top_queries": 300, "use_focal_loss": True},
}
_SMALL = {"PResNet": {"freeze_at": -1, "freeze_norm": False},
          "HybridEncoder": {"in_channels": [128, 256, 512], "hidden_dim": 256, "expansion": 0.5}}


def _variant(base: Dict, *changes: Mapping[str, Any]) -> Dict:
    out = copy.deepcopy(base)
    for change in changes:
        for k, v in change.items():
            if isinstance(v, Mapping):
                out[k].update(copy.deepcopy(dict(v)))
            else:
                out[k] = v
    return out


def _r18(**dec):
    return _variant(_R50, _SMALL, {"PResNet": {"depth": 18}, "RTDETRTransformerv2": {"num_layers": 3, **dec}})


def _r34(**dec):
    return _variant(_R50, _SMALL, {"PResNet": {"depth": 34}, "RTDETRTransformerv2": {"num_layers": 4, **dec}})


_R50M = {"HybridEncoder": {"expansion": 0.5}, "RTDETRTransformerv2": {"eval_idx": 2}}
_R101 = {"PResNet": {"depth": 101}, "HybridEncoder": {"hidden_dim": 384, "dim_feedforward": 2048},
         "RTDETRTransformerv2": {"feat_channels": [384, 384, 384]}}
_DISCRETE = {"RTDETRTransformerv2": {"cross_attn_method": "discrete"}}

# Released configs (configs/rtdetrv2/*.yml), by the name of their checkpoint minus schedule.
RTDETR_CONFIGS: Dict[str, Dict] = {
    "rtdetrv2_r18vd": _r18(),
    "rtdetrv2_r18vd_sp1": _r18(num_points=[1, 1, 1]),
    "rtdetrv2_r18vd_sp2": _r18(num_points=[2, 2, 2]),
    "rtdetrv2_r18vd_sp3": _r18(num_points=[3, 3, 3]),
    "rtdetrv2_r18vd_dsp": _r18(cross_attn_method="discrete"),
    "rtdetrv2_r34vd": _r34(),
    "rtdetrv2_r34vd_dsp": _r34(cross_attn_method="discrete"),
    "rtdetrv2_r50vd_m": _variant(_R50, _R50M),
    "rtdetrv2_r50vd_m_dsp": _variant(_R50, _R50M, _DISCRETE),
    "rtdetrv2_r50vd": _variant(_R50),
    "rtdetrv2_r50vd_dsp": _variant(_R50, _DISCRETE),
    "rtdetrv2_r101vd": _variant(_R50, _R101),
}
_SHARED = ("num_classes", "eval_spatial_size")  # top-level keys the official YAMLConfig shares into modules
# Accepted but without effect here: download switches and training-only switches.
_NO_EFFECT = {"PResNet.pretrained", "RTDETRTransformerv2.aux_loss"}


def parse_updates(updates: Sequence[str]) -> Dict[str, Any]:
    """['A.b=1', 'c=[1,2]'] -> {'A.b': 1, 'c': [1, 2]} (values are YAML, `~` is None).

    One-line errors for a bare string (a list of strings is expected: one entry per --update), an
    entry without `=` and a value that is not YAML."""
    if isinstance(updates, (str, bytes)):
        raise OfficialCheckpointError(f"updates must be a list of KEY=VALUE strings (one per --update), not the string "
                                      f"{updates!r}: pass [{updates!r}]")
    out: Dict[str, Any] = {}
    for item in updates or ():
        if not isinstance(item, str) or "=" not in item or not item.split("=", 1)[0].strip():
            raise OfficialCheckpointError(f"--update {item!r} must look like KEY=VALUE (e.g. --update HybridEncoder.hidden_dim=64)")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem", None) or type(e).__name__
            raise OfficialCheckpointError(f"--update {item}: the value {raw!r} is not valid YAML ({mark}); write lists as "
                                          f"[4,4,4], None as ~") from None
    return out


def resolve_config(name: str, updates: Sequence[str] = ()) -> Dict:
    """The official module kwargs of released config `name` with `updates` applied."""
    if name not in RTDETR_CONFIGS:
        raise OfficialCheckpointError(f"unknown RT-DETRv2 config '{name}'. Valid: {', '.join(RTDETR_CONFIGS)}")
    cfg = copy.deepcopy(RTDETR_CONFIGS[name])
    for key, value in parse_updates(updates).items():
        section, _, leaf = key.rpartition(".")
        if not section:
            if key not in cfg or isinstance(cfg[key], dict):
                tops = [k for k, v in cfg.items() if not isinstance(v, dict)]
                raise OfficialCheckpointError(f"unknown RT-DETRv2 update key '{key}'. Top-level keys: {', '.join(tops)}; "
                                              f"module keys look like HybridEncoder.hidden_dim")
            cfg[key] = value
        elif key in _NO_EFFECT:
            continue
        elif leaf in _SHARED:
            cfg[leaf] = value
        elif section not in cfg or not isinstance(cfg[section], dict) or leaf not in cfg[section]:
            valid = ", ".join(f"{section}.{k}" for k in cfg.get(section, {})) if isinstance(cfg.get(section), dict) else \
                ", ".join(k for k, v in cfg.items() if isinstance(v, dict))
            raise OfficialCheckpointError(f"unknown RT-DETRv2 update key '{key}'. Valid: {valid}")
        else:
            cfg[section][leaf] = value
    return cfg


_METHOD_KEY = "RTDETRTransformerv2.cross_attn_method"
_DISCRETE_NAME = re.compile(r"(^|[_\-.])(dsp|discrete)([_\-.]|$)", re.IGNORECASE)


def cross_attn_updates(path: Any, config: str, updates: Sequence[str]) -> List[str]:
    """`updates` plus the decoder's sampling method when only the file name tells it.

    The weights of the default and the discrete ("_dsp") sampling are identical in shape, so a
    discrete checkpoint loaded as default runs, just ~1e-3 off. An explicit update wins; then a
    `_dsp` config name; then the file (or its folder) name, e.g. `rtdetrv2_r18vd_dsp_3x_coco.pth`.
    Whatever is used is logged, with how to change it."""
    import logging
    from pathlib import Path

    log = logging.getLogger("edgedet.checkpoints")
    updates = list(updates or ())
    if any(u.split("=", 1)[0].strip() in (_METHOD_KEY, "cross_attn_method") for u in updates):
        return updates
    p = Path(str(path))
    named = next((n for n in (p.stem, p.parent.name) if _DISCRETE_NAME.search(n)), None)
    configured = RTDETR_CONFIGS.get(config, {}).get("RTDETRTransformerv2", {}).get("cross_attn_method", "default")
    if named is not None and configured != "discrete":
        log.warning("RT-DETRv2 decoder sampling: discrete, as the name '%s' says (config %s says default; pass the update "
                    "%s=default to override)", named, config, _METHOD_KEY)
        return updates + [f"{_METHOD_KEY}=discrete"]
    log.warning("RT-DETRv2 decoder sampling: %s (from config %s; the weights cannot tell: a _dsp checkpoint needs "
                "the update %s=discrete)", configured, config, _METHOD_KEY)
    return updates


def official_to_fields(cfg: Mapping) -> Dict[str, Any]:
    """Resolved official kwargs -> RTDETRConfig fields (one-line error for what we cannot build)."""
    b, e, d, p = cfg["PResNet"], cfg["HybridEncoder"], cfg["RTDETRTransformerv2"], cfg["RTDETRPostProcessor"]
    if e.get("version", "v2") != "v2":
        raise OfficialCheckpointError(f"HybridEncoder.version '{e['version']}' is not supported (RT-DETRv2 uses v2)")
    if not p.get("use_focal_loss", True):
        raise OfficialCheckpointError("use_focal_loss=False (softmax RT-DETR) is not supported; RT-DETRv2 is sigmoid")
    if list(d["feat_channels"]) != [e["hidden_dim"]] * len(d["feat_channels"]):
        raise OfficialCheckpointError(f"RTDETRTransformerv2.feat_channels {d['feat_channels']} must equal the encoder "
                                      f"widths (HybridEncoder.hidden_dim={e['hidden_dim']} per level)")
    points = d["num_points"] if isinstance(d["num_points"], list) else [d["num_points"]] * d["num_levels"]
    size = cfg.get("eval_spatial_size")
    return {
        "num_classes": int(cfg["num_classes"]), "backbone": f"presnet{b['depth']}", "backbone_variant": b["variant"],
        "backbone_return_idx": list(b["return_idx"]), "backbone_freeze_at": int(b["freeze_at"]),
        "backbone_frozen_bn": bool(b["freeze_norm"]), "backbone_act": b["act"],
        "encoder_hidden_dim": int(e["hidden_dim"]), "feat_strides": list(e["feat_strides"]),
        "encoder_nhead": int(e["nhead"]), "encoder_dim_feedforward": int(e["dim_feedforward"]),
        "encoder_dropout": float(e["dropout"]), "encoder_act": e["enc_act"], "use_encoder_idx": list(e["use_encoder_idx"]),
        "num_encoder_layers": int(e["num_encoder_layers"]), "pe_temperature": float(e["pe_temperature"]),
        "expansion": float(e["expansion"]), "depth_mult": float(e["depth_mult"]), "fusion_act": e["act"],
        "hidden_dim": int(d["hidden_dim"]), "num_queries": int(d["num_queries"]), "num_levels": int(d["num_levels"]),
        "num_points": [int(n) for n in points], "nheads": int(d["nhead"]), "dec_layers": int(d["num_layers"]),
        "dim_feedforward": int(d["dim_feedforward"]), "dropout": float(d["dropout"]), "activation": d["activation"],
        "num_denoising": int(d["num_denoising"]), "label_noise_ratio": float(d["label_noise_ratio"]),
        "box_noise_scale": float(d["box_noise_scale"]), "learn_query_content": bool(d["learn_query_content"]),
        "eval_idx": int(d["eval_idx"]), "anchor_eps": float(d["eps"]), "cross_attn_method": d["cross_attn_method"],
        "query_select_method": d["query_select_method"],
        "eval_spatial_size": [int(size[0]), int(size[1])] if size else None,
        "num_top_queries": int(p["num_top_queries"]),
    }


def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state for m in [rx.match(k)] if m})


def fields_from_weights(state: Mapping[str, Tensor]) -> Dict[str, Any]:
    """What the state_dict itself says about the architecture (RTDETRConfig field -> value)."""
    try:
        stages = [_count(state, rf"backbone\.res_layers\.{i}\.blocks\.(\d+)\.") for i in range(4)]
        bottleneck = "backbone.res_layers.0.blocks.0.branch2c.conv.weight" in state
        depth = {(2, 2, 2, 2, False): 18, (3, 4, 6, 3, False): 34, (3, 4, 6, 3, True): 50, (3, 4, 23, 3, True): 101}
        hidden = state["decoder.enc_output.proj.weight"].shape[0]
        enc_hidden = state["encoder.input_proj.0.conv.weight"].shape[0]
        scale = state["decoder.decoder.layers.0.cross_attn.num_points_scale"].tolist()
        points: List[int] = []
        while len(scale) > sum(points):
            points.append(int(round(1 / scale[sum(points)])))
        total = state["decoder.decoder.layers.0.cross_attn.attention_weights.weight"].shape[0]
        out = {
            "backbone": f"presnet{depth.get((*stages, bottleneck), '?' + str(stages))}",
            "backbone_variant": "d" if "backbone.conv1.conv1_2.conv.weight" in state else "b",
            "encoder_hidden_dim": enc_hidden,
            "encoder_dim_feedforward": state["encoder.encoder.0.layers.0.linear1.weight"].shape[0],
            "num_encoder_layers": _count(state, r"encoder\.encoder\.0\.layers\.(\d+)\."),
            "expansion": state["encoder.fpn_blocks.0.conv1.conv.weight"].shape[0] / enc_hidden,
            "depth_mult": _count(state, r"encoder\.fpn_blocks\.0\.bottlenecks\.(\d+)\.") / 3,
            "hidden_dim": hidden,
            "num_levels": _count(state, r"decoder\.input_proj\.(\d+)\."),
            "num_points": points,
            "nheads": total // max(1, sum(points)),
            "dec_layers": _count(state, r"decoder\.dec_score_head\.(\d+)\."),
            "dim_feedforward": state["decoder.decoder.layers.0.linear1.weight"].shape[0],
            "num_classes": state["decoder.dec_score_head.0.weight"].shape[0],
        }
    except KeyError as e:
        raise OfficialCheckpointError(f"not an RT-DETRv2 checkpoint: it lacks the key {e}") from None
    anchors = state.get("decoder.anchors")
    out["anchor_tokens"] = None if anchors is None else anchors.shape[1]
    out["learn_query_content"] = "decoder.tgt_embed.weight" in state
    if out["learn_query_content"]:
        out["num_queries"] = state["decoder.tgt_embed.weight"].shape[0]
    return out


def check_against_weights(fields: Mapping[str, Any], state: Mapping[str, Tensor], source: str) -> None:
    """Raise one line naming every config field the weights contradict."""
    seen = fields_from_weights(state)
    wrong = []
    for key, value in seen.items():
        if key == "anchor_tokens":
            size = fields.get("eval_spatial_size")
            strides = list(fields["feat_strides"]) + [fields["feat_strides"][-1] * 2 ** (i + 1)
                                                      for i in range(fields["num_levels"] - len(fields["feat_strides"]))]
            want = None if not size else sum(int(size[0] / s) * int(size[1] / s) for s in strides)
            if want != value:
                wrong.append(f"eval_spatial_size={size} ({want} anchors; weights: "
                             f"{'no anchors' if value is None else f'{value} anchors'})")
        elif key in fields and fields[key] != value and not (isinstance(value, float) and abs(fields[key] - value) < 1e-6):
            wrong.append(f"{key}={fields[key]!r} (weights: {value!r})")
    if wrong:
        raise OfficialCheckpointError(f"{source}: config disagrees with the weights: {'; '.join(wrong)} "
                                      f"(fix with --update KEY=VALUE, e.g. num_classes=..., eval_spatial_size=~)")


def _rtdetr_matches(state: Mapping[str, Tensor]) -> bool:
    return "decoder.dec_score_head.0.weight" in state and "encoder.fpn_blocks.0.conv1.conv.weight" in state


def _needs_config(*_: Any) -> Dict[str, Any]:
    raise OfficialCheckpointError("RT-DETRv2 checkpoints carry no config: name the released one with --config NAME "
                                  f"(one of {', '.join(RTDETR_CONFIGS)}) and --update KEY=VALUE for what was changed")


OFFICIAL_FAMILIES.register("rtdetr")(FamilySpec(
    "rtdetr", "decoder.dec_score_head.* + encoder.fpn_blocks.* (lyuwenyu/RT-DETR v2)", _rtdetr_matches,
    _needs_config, _needs_config))


__all__ = ["RTDETR_CONFIGS", "parse_updates", "resolve_config", "official_to_fields", "fields_from_weights",
           "check_against_weights", "suggest_updates", "model_config"]


# ---------------------------------------------------------------- released configs that fit a file

# RTDETRConfig field (as fields_from_weights reads it) -> the official update key that sets it
_FIELD_UPDATES = {"encoder_dim_feedforward": "HybridEncoder.dim_feedforward",
                  "num_encoder_layers": "HybridEncoder.num_encoder_layers", "expansion": "HybridEncoder.expansion",
                  "depth_mult": "HybridEncoder.depth_mult", "hidden_dim": "RTDETRTransformerv2.hidden_dim",
                  "num_points": "RTDETRTransformerv2.num_points", "nheads": "RTDETRTransformerv2.nhead",
                  "dec_layers": "RTDETRTransformerv2.num_layers", "dim_feedforward": "RTDETRTransformerv2.dim_feedforward",
                  "num_classes": "num_classes"}


def _yaml(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_yaml(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) >= 1 else str(value)
    return str(value)


def spatial_size_update(tokens: Any, strides: Sequence[int]) -> str:
    """The eval_spatial_size update giving `tokens` anchors (~ for none; a square size otherwise)."""
    if tokens is None:
        return "eval_spatial_size=~"
    for side in range(32, 4097, 32):
        if sum(int(side / s) ** 2 for s in strides) == tokens:
            return f"eval_spatial_size=[{side},{side}]"
    raise OfficialCheckpointError(f"no square eval_spatial_size gives the checkpoint's {tokens} anchors")


def suggest_updates(name: str, state: Mapping[str, Tensor]) -> List[str]:
    """--update strings that make released config `name` say what the weights show (backbone must match)."""
    fields = official_to_fields(resolve_config(name))
    seen = fields_from_weights(state)
    if (seen["backbone"], seen["backbone_variant"]) != (fields["backbone"], fields["backbone_variant"]):
        raise OfficialCheckpointError(f"backbone {seen['backbone']}{seen['backbone_variant']} is not {name}'s")
    out = []
    if seen["encoder_hidden_dim"] != fields["encoder_hidden_dim"]:
        width = seen["encoder_hidden_dim"]
        out += [f"HybridEncoder.hidden_dim={width}", f"RTDETRTransformerv2.feat_channels={_yaml([width] * fields['num_levels'])}"]
    for key, update in _FIELD_UPDATES.items():
        if seen[key] != fields[key] and not (isinstance(seen[key], float) and abs(seen[key] - fields[key]) < 1e-6):
            out.append(f"{update}={_yaml(seen[key])}")
    if seen["learn_query_content"] != fields["learn_query_content"]:
        out.append(f"RTDETRTransformerv2.learn_query_content={seen['learn_query_content']}")
    if seen["learn_query_content"] and seen.get("num_queries") != fields["num_queries"]:
        out.append(f"RTDETRTransformerv2.num_queries={seen['num_queries']}")
    size = fields["eval_spatial_size"]
    want = None if not size else sum(int(size[0] / s) * int(size[1] / s) for s in fields["feat_strides"])
    if want != seen["anchor_tokens"]:
        out.append(spatial_size_update(seen["anchor_tokens"], fields["feat_strides"]))
    return out


def model_config(name: str, updates: Sequence[str] = ()):
    """RTDETRConfig of released config `name` + official updates (no weights involved)."""
    from edgedet.config import from_dict
    from edgedet.registry import MODELS

    fields = official_to_fields(resolve_config(name, updates))
    return from_dict(MODELS.meta("rtdetr")["config"], {**fields, "name": "rtdetr"}, "model")


def _register_released() -> None:
    from edgedet.checkpoints.released_configs import RELEASED_FAMILIES, ReleasedFamily

    distinct = [n for n in RTDETR_CONFIGS if not n.endswith("_dsp")]  # discrete sampling: same tensors
    RELEASED_FAMILIES.register("rtdetr")(ReleasedFamily(
        "rtdetr", "RT-DETRv2", lambda: list(RTDETR_CONFIGS), lambda: distinct,
        lambda name: name in RTDETR_CONFIGS or name.startswith("rtdetr"), model_config, dict, suggest_updates,
        "HybridEncoder.nhead, RTDETRTransformerv2.num_queries, RTDETRTransformerv2.cross_attn_method (the _dsp configs)"))


_register_released()
