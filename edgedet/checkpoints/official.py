"""Loading checkpoints written by the official DETR-family repositories.

Owns `load_official(path, family=None)`: read the file safely (`safe_torch_load`), detect the
family from its keys (and `args`), rebuild our model config from the checkpoint's `args`
(or from tensor shapes when there are none), rename the few keys whose layout differs
(`backbone.0.body.` -> `backbone.body.`, a DDP `module.` prefix), cast half tensors to float32
and load every tensor. Nothing is skipped silently: keys the model lacks, keys the checkpoint
lacks and shape mismatches are all reported, grouped by module.

Per-family facts (key signatures, args -> config) live in `official_configs`, on the
`FamilySpec` machinery of `official_spec`; the strict state_dict loading every family shares in
`official_state_dict`.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

import edgedet.checkpoints.official_configs  # noqa: F401  (registers the family specs)
from edgedet.checkpoints import dfine_official, rfdetr_official, rtdetr_official
from edgedet.checkpoints.official_spec import (
    DEFAULT_NHEADS,
    OfficialCheckpointError,
    args_modelname,
    family_names,
    get_spec,
)
from edgedet.checkpoints.official_state_dict import load_official_state_dict
from edgedet.checkpoints.released_configs import (RELEASED_FAMILIES, article, family_of_config, missing_config,
                                                  released_family)
from edgedet.checkpoints.safe_load import safe_torch_load
from edgedet.config import ModelConfig, from_dict
from edgedet.registry import MODELS

log = logging.getLogger(__name__)

_MODELNAME_FAMILIES = {"dab_detr": "dab_detr", "dino": "dino"}


# ---------------------------------------------------------------- reading


def _as_args(raw: Any, path: Path) -> Optional[Dict[str, Any]]:
    if raw is None:
        return None
    if isinstance(raw, argparse.Namespace):
        return dict(vars(raw))
    if isinstance(raw, Mapping):
        return dict(raw)
    raise OfficialCheckpointError(f"{path}: 'args' is a {type(raw).__name__}; expected a dict or argparse.Namespace")


def read_official_checkpoint(path: Union[str, Path]) -> Tuple[Dict[str, Tensor], Optional[Dict[str, Any]]]:
    """-> (state_dict with the official key names, args dict or None).

    Accepts {'model': state_dict, 'args': ...} (the training scripts' format, optimizer etc.
    ignored), {'ema': {'module': state_dict}, ...} (RT-DETR's solver: the EMA weights win, as
    its export tool loads them), {'state_dict': ...} or a bare state_dict. A DDP `module.`
    prefix is removed.
    """
    p = Path(path)
    obj = safe_torch_load(p)
    if not isinstance(obj, Mapping):
        raise OfficialCheckpointError(f"{p} holds a {type(obj).__name__}, not a checkpoint dict")
    if str(obj.get("format", "")).startswith("edgedet-checkpoint"):
        raise OfficialCheckpointError(f"{p} is an edgedet checkpoint, not an official one: use it as it is "
                                      "(--model / --weights, or edgedet.engine.checkpoint.load_model), no conversion needed")
    args = None
    ema = obj.get("ema")
    if isinstance(ema, Mapping) and isinstance(ema.get("module"), Mapping):
        state = ema["module"]
    elif "model" in obj and isinstance(obj["model"], Mapping):
        state, args = obj["model"], _as_args(obj.get("args"), p)
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        state = obj["state_dict"]
    elif obj and all(isinstance(v, Tensor) for v in obj.values()):
        state = obj
    else:
        raise OfficialCheckpointError(f"{p} has no 'model' state_dict (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise OfficialCheckpointError(f"{p}: state_dict entry '{bad[0]}' is not a tensor")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state), args


# ---------------------------------------------------------------- family and config


def detect_family(state: Mapping[str, Tensor], args: Optional[Dict[str, Any]] = None) -> str:
    """The official family whose key signature `state` matches (cross-checked with args.modelname)."""
    hits = [name for name in family_names() if get_spec(name).matches(state)]
    signatures = "; ".join(f"{n}: {get_spec(n).signature}" for n in family_names())
    if not hits:
        raise OfficialCheckpointError(f"cannot tell which DETR family this checkpoint is; supported key signatures: {signatures}")
    if len(hits) > 1:
        raise OfficialCheckpointError(f"checkpoint matches several families ({', '.join(hits)}); pass the family explicitly")
    named = args_modelname(args)
    if named is not None and _MODELNAME_FAMILIES.get(named, hits[0]) != hits[0]:
        raise OfficialCheckpointError(f"checkpoint keys look like '{hits[0]}' but its args say modelname='{named}'")
    return hits[0]


def _resolve_family(state: Mapping[str, Tensor], args: Optional[Dict[str, Any]], family: Optional[str]) -> str:
    if family is None:
        return detect_family(state, args)
    if family not in family_names():
        raise OfficialCheckpointError(f"unknown family '{family}'. Valid names: {', '.join(family_names())}")
    try:
        detected = detect_family(state, args)
    except OfficialCheckpointError:
        return family  # no signature matched: trust the caller; key checks report what differs
    if detected != family:
        raise OfficialCheckpointError(
            f"this is a '{detected}' checkpoint ({get_spec(detected).signature}), not '{family}'; "
            f"pass --from {detected} (or omit the family to auto-detect)"
        )
    return family


def config_for_checkpoint(
    family: str, state: Mapping[str, Tensor], args: Optional[Dict[str, Any]], overrides: Optional[Mapping[str, Any]] = None
) -> ModelConfig:
    """Our model config for an official checkpoint: from its args, else from tensor shapes.

    `overrides` (config field -> value) are applied last, e.g. {"nheads": 4} for a checkpoint
    without args, or {"class_names": [...]}.
    """
    if family == "rfdetr":  # its own reader: released sizes, args and weights cross-checked
        return rfdetr_official.rfdetr_config_for_checkpoint(state, args, None, overrides)
    spec = get_spec(family)
    overrides = dict(overrides or {})
    fields = spec.from_args(args, state) if args is not None else {}
    nheads = int(fields.get("nheads", overrides.get("nheads", DEFAULT_NHEADS)))
    try:
        shapes = spec.from_shapes(state, nheads)
    except KeyError as e:
        raise OfficialCheckpointError(f"not a {family} checkpoint: it lacks the key {e}") from None
    if args is None:
        fields = shapes
        if "nheads" not in overrides:  # a wrong guess loads without error and moves every box: refuse to guess
            raise OfficialCheckpointError(
                f"this {family} checkpoint has no args, and its number of attention heads is not visible in the "
                f"weights; say it: --update nheads=N (the official --nheads, default {DEFAULT_NHEADS}; convert-checkpoint "
                f"also takes --set nheads=N)")
        log.warning("%s checkpoint has no args: config inferred from tensor shapes with nheads=%d and dilation=False "
                    "(not visible in shapes; override with dilation=true for a DC5 model)", family, nheads)
    else:
        wrong = [f"{f}={fields[f]!r} (weights: {shapes[f]!r})" for f in ("backbone",) + tuple(spec.shape_fields)
                 if f in fields and f in shapes and fields[f] != shapes[f]]
        if wrong:
            raise OfficialCheckpointError(f"the checkpoint's args disagree with its weights: {', '.join(wrong)}")
        if fields.get("num_classes") != shapes["num_classes"]:
            # Class counts are hard-coded in the official builds, so fine-tuned checkpoints
            # routinely differ from what args imply; the weights are the truth.
            log.warning("num_classes from args (%s) differs from the class head (%s); using the weights'",
                        fields.get("num_classes"), shapes["num_classes"])
            fields["num_classes"] = shapes["num_classes"]
    if overrides:
        fields.update(overrides)
    cfg_cls = MODELS.meta(family)["config"]
    return from_dict(cfg_cls, {**fields, "name": family}, "model")


# ---------------------------------------------------------------- public entry point


def rtdetr_config_for_checkpoint(state: Mapping[str, Tensor], config: Optional[str], updates: Sequence[str] = (),
                                 overrides: Optional[Mapping[str, Any]] = None, source: str = "checkpoint") -> ModelConfig:
    """RTDETRConfig for an RT-DETRv2 release checkpoint: the named released config + official updates,
    checked against what the weights show; `overrides` (our field names) applied last."""
    if config is None:
        rtdetr_official._needs_config()
    fields = rtdetr_official.official_to_fields(rtdetr_official.resolve_config(config, updates))
    rtdetr_official.check_against_weights(fields, state, f"{source} with --config {config}")
    fields.update(dict(overrides or {}))
    return from_dict(MODELS.meta("rtdetr")["config"], {**fields, "name": "rtdetr"}, "model")


def _check_config_family(path: Union[str, Path], detected: str, config: Optional[str], updates: Sequence[str],
                         state: Mapping[str, Tensor], args_less: bool = False) -> None:
    """One-line errors when --config / --update do not belong to the checkpoint's family."""
    if isinstance(updates, (str, bytes)):
        rtdetr_official.parse_updates(updates)  # raises: a list of strings is expected
    if config is None:
        if detected in RELEASED_FAMILIES:
            raise missing_config(str(path), detected, state)
        if updates and not args_less:
            raise OfficialCheckpointError(f"--update needs --config NAME, and {path} is a '{detected}' checkpoint, which "
                                          "carries its own config (args): drop --update (use --set FIELD=VALUE for our fields)")
        return
    owner = family_of_config(config)
    if owner is None:
        raise OfficialCheckpointError(f"--config {config} is not a released config; released: "
                                      + "; ".join(f"{released_family(f).title}: {', '.join(released_family(f).names())}"
                                                  for f in RELEASED_FAMILIES.names()))
    if detected not in RELEASED_FAMILIES:
        theirs = released_family(owner).title
        raise OfficialCheckpointError(f"{path} is a '{detected}' checkpoint, which carries its own config (args), but "
                                      f"--config {config} is {article(theirs)} {theirs} config: drop --config/--update")
    if owner != detected:
        mine, theirs = released_family(detected).title, released_family(owner).title
        raise OfficialCheckpointError(f"{path} is {article(mine)} {mine} checkpoint, but --config {config} is {article(theirs)} "
                                      f"{theirs} config; {missing_config(str(path), detected, state).fits_text()}")


# Official training args a file without `args` cannot show in its shapes; --update supplies them.
ARGS_LESS_UPDATES = ("nheads", "dilation")


def _args_updates(updates: Sequence[str], path: Union[str, Path]) -> Dict[str, Any]:
    """--update nheads=8 for a checkpoint saved without its args -> {"nheads": 8}; other keys are refused."""
    values = rtdetr_official.parse_updates(updates)
    wrong = [k for k in values if k not in ARGS_LESS_UPDATES]
    if wrong:
        raise OfficialCheckpointError(f"--update {wrong[0]}=...: {path} has no args, and only what its shapes cannot show "
                                      f"is set this way ({', '.join(ARGS_LESS_UPDATES)}); the rest comes from the weights")
    return values


def _load_rfdetr(path, config: Optional[str], updates: Sequence[str], overrides) -> nn.Module:
    if updates:
        raise OfficialCheckpointError(f"{path}: RF-DETR checkpoints carry their args, so --update does not apply; "
                                      "the architecture comes from the file (name a size with --config to check it)")
    return rfdetr_official.load_rfdetr_official(path, config, overrides)


def load_official(
    path: Union[str, Path], family: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
    config: Optional[str] = None, updates: Sequence[str] = (),
) -> nn.Module:
    """Build the edgedet model for an official checkpoint and load its weights; eval mode.

    family: detr | deformable_detr | dab_detr | dino | rtdetr | dfine | rfdetr, or None to detect it from the keys.
    RF-DETR files carry their args; `config` may name a released size (rfdetr_nano ... rfdetr_large),
    which is then checked against the file.
    overrides: config fields to set on top of what the checkpoint implies (see
    `config_for_checkpoint`); shape-changing ones make the load fail with the mismatches.
    config, updates: what the CLI's --config NAME and --update KEY=VALUE say, for the families whose
    checkpoints carry no config (RT-DETRv2: `rtdetr_official.RTDETR_CONFIGS`, e.g. "rtdetrv2_r18vd";
    D-FINE/DEIM: the official YAML names, e.g. "dfine_hgnetv2_n_coco"): the released config name and a
    list of the official tools' override strings (e.g. ["HybridEncoder.hidden_dim=64", "num_classes=5"]).
    Without `config` such a checkpoint raises an error listing the released configs that fit its shapes.
    """
    from edgedet.models import create_model_from_config

    if family is not None and family not in family_names():
        raise OfficialCheckpointError(f"unknown family '{family}'. Valid names: {', '.join(family_names())}")
    if family == "rfdetr" or (config is not None and family is None and rfdetr_official.is_rfdetr_config(config)):
        return _load_rfdetr(path, config, updates, overrides)
    state, args = read_official_checkpoint(path)
    family = _resolve_family(state, args, family)
    if family == "rfdetr":
        return _load_rfdetr(path, config, updates, overrides)
    _check_config_family(path, family, config, updates, state, args_less=args is None)
    source = f"checkpoint {path}"
    if family == "dfine":
        return dfine_official.load_dfine_state(state, config, updates, overrides, source)
    if family == "rtdetr":
        if config is not None:  # the sampling method the weights cannot show: from the names, and said
            updates = rtdetr_official.cross_attn_updates(path, config, updates)
        cfg = rtdetr_config_for_checkpoint(state, config, updates, overrides, source)
    else:
        cfg = config_for_checkpoint(family, state, args, {**_args_updates(updates, path), **dict(overrides or {})})
    model = create_model_from_config(cfg)
    load_official_state_dict(model, state, source)
    log.info("loaded official %s checkpoint %s (%d tensors)", family, path, len(state))
    return model.eval()


def convert_official(
    src: Union[str, Path], out: Union[str, Path], family: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
    config: Optional[str] = None, updates: Sequence[str] = (),
) -> Tuple[Path, nn.Module]:
    """Convert an official checkpoint into an edgedet checkpoint (`edgedet-checkpoint-v1`).

    The file holds format, model (our state_dict), config (the ExperimentConfig dict with the
    rebuilt model config), edgedet_version and epoch 0; `edgedet.engine.checkpoint.load_model`
    reads it. Written atomically. Returns (out path, the loaded model).
    """
    import edgedet
    from edgedet.config import DataConfig, ExperimentConfig, to_dict
    from edgedet.engine.checkpoint import FORMAT

    from runtime.safety import refuse_output_over_input

    refuse_output_over_input([out], [src], what="converted checkpoint")  # never replace the official file
    model = load_official(src, family, overrides, config=config, updates=updates)
    experiment = ExperimentConfig(model=model.config)
    if getattr(model, "input_mean", None) is not None:  # the family's preprocessing travels with the weights
        experiment.data = DataConfig(mean=tuple(model.input_mean), std=tuple(model.input_std))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "format": FORMAT,
        "model": model.state_dict(),
        "config": to_dict(experiment),
        "edgedet_version": edgedet.__version__,
        "epoch": 0,
    }
    tmp = out.with_name(out.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(out)
    return out, model
