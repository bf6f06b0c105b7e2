"""Fine-tuning from pretrained weights: read them, take the architecture from them, load them.

`model.weights` (CLI `--weights`) may be
- a checkpoint written by `edgedet train` (its EMA weights when it has them),
- an official checkpoint of a family `load_official` reads (keys renamed as there),
- a torchvision ImageNet ResNet state dict: backbone only.

The architecture comes from the weights (`resolve_config`): a model field the user set to something
other than the family default and other than the weights' value is an error, unless it only affects
training (loss weights, dropout, ...). The class count and names come from the dataset. Tensors
whose shape depends on the class count (each family lists them: `DetectorBase.class_dependent_keys`)
keep the fresh model's own initialisation (focal prior bias etc.) unless the class names are
the checkpoint's, or `model.keep_classes` picks checkpoint rows for them. `load_pretrained` returns
a `LoadReport` (loaded / kept rows / re-initialised / unused / missing, grouped by module).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from edgedet.config import ConfigError, ExperimentConfig, ModelConfig

log = logging.getLogger(__name__)

# Model fields that change how a model trains but not its tensors: the user may set them freely.
_TRAINING_ONLY = {"name", "num_classes", "class_names", "weights", "weights_config", "weights_updates", "keep_classes",
                  "backbone_weights",
                  "backbone_frozen_bn", "train_backbone", "aux_loss", "dropout", "msda_impl", "dn_number",
                  "dn_label_noise_ratio", "dn_box_noise_scale", "focal_alpha"}
WEIGHTS_HELP = ("an `edgedet train` checkpoint, an official DETR / Deformable DETR / DAB-DETR / DINO / RT-DETRv2 / "
                "D-FINE / DEIM checkpoint, or a torchvision ImageNet ResNet .pth")


def _training_only(name: str) -> bool:
    return name in _TRAINING_ONLY or name.endswith("_coef") or name.startswith("set_cost_")


@dataclass
class PretrainedWeights:
    path: Path
    kind: str  # edgedet | official | imagenet
    state: Dict[str, Tensor]  # our key names (empty for imagenet)
    config: Optional[ModelConfig]  # the architecture the weights imply (None for imagenet)
    class_names: List[str]  # the checkpoint's class names; empty when unknown
    aliases: Dict[str, List[str]] = field(default_factory=dict)  # key -> keys holding the same tensor


def _is_imagenet_resnet(obj) -> bool:
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    return (isinstance(state, Mapping) and "conv1.weight" in state and "layer1.0.conv1.weight" in state
            and not any(str(k).startswith(("backbone.", "module.")) for k in state))


def read_weights(path: Union[str, Path], config: Optional[str] = None, updates: Sequence[str] = ()) -> PretrainedWeights:
    """Read any supported weights file (see the module docstring); one-line errors otherwise.

    config, updates: --config NAME / --update KEY=VALUE for official weights whose files carry no
    config (RT-DETRv2, D-FINE, DEIM); refused for any other file."""
    from edgedet.checkpoints.official import load_official
    from edgedet.checkpoints.official_state_dict import alias_groups
    from edgedet.checkpoints.safe_load import safe_torch_load
    from edgedet.data.coco_names import official_class_names
    from edgedet.engine.checkpoint import FORMAT, checkpoint_config

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights not found: {p}; pass {WEIGHTS_HELP}")
    obj = safe_torch_load(p)
    own_config = isinstance(obj, Mapping) and obj.get("format") == FORMAT
    if (config or updates) and (own_config or _is_imagenet_resnet(obj)):
        what = "an `edgedet train` checkpoint, which carries its config" if own_config else "an ImageNet backbone"
        raise ConfigError(f"--config {config or '(none)'} / --update name the released config of official RT-DETRv2 / "
                          f"D-FINE / DEIM weights, but {p} is {what}: drop --config and --update")
    if own_config:
        cfg = checkpoint_config(obj).model
        ema = obj.get("ema")
        state = ema["module"] if isinstance(ema, Mapping) and "module" in ema else obj["model"]
        return PretrainedWeights(p, "edgedet", dict(state), cfg, list(cfg.class_names))
    if _is_imagenet_resnet(obj):
        return PretrainedWeights(p, "imagenet", {}, None, [])
    del obj
    # Official weights: load_official builds the family's model (its own loader, --config/--update for
    # the families whose files carry none) and loads every tensor strictly, so the weights handed on
    # are exactly what loaded, in our key names and dtypes.
    model = load_official(p, config=config, updates=list(updates))
    state = dict(model.state_dict())
    cfg = model.config
    # Official COCO builds: COCO names in the family's row order (91 category ids, or 80 contiguous).
    return PretrainedWeights(p, "official", state, cfg, official_class_names(cfg.name, cfg.num_classes),
                             alias_groups(state))


def weights_family(path: Union[str, Path]) -> str:
    """The model family a weights file holds (for `edgedet train --weights` without --model)."""
    from edgedet.checkpoints.official import detect_family, read_official_checkpoint
    from edgedet.checkpoints.safe_load import safe_torch_load
    from edgedet.engine.checkpoint import FORMAT, checkpoint_config

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights not found: {p}; pass {WEIGHTS_HELP}")
    obj = safe_torch_load(p)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return checkpoint_config(obj).model.name
    if _is_imagenet_resnet(obj):
        raise ConfigError(f"{path} is an ImageNet backbone (no detector architecture); say which detector: --model NAME")
    return detect_family(*read_official_checkpoint(p))


# ---------------------------------------------------------------- architecture from the weights


def resolve_config(cfg: ExperimentConfig, weights: PretrainedWeights) -> ExperimentConfig:
    """`cfg` with its model architecture taken from `weights`; conflicting fields raise ConfigError."""
    from edgedet.models import default_config

    m = cfg.model
    if weights.config is None:  # ImageNet backbone: the architecture is the user's
        return cfg
    w = weights.config
    if m.name != w.name and not isinstance(m, type(w)):
        raise ConfigError(f"--weights {weights.path} holds a '{w.name}' model, not '{m.name}'; drop --model "
                          f"(the architecture comes from the weights) or pass '{m.name}' weights")
    # A family built on the weights' family (trex on dino) takes the shared fields from the weights;
    # its own tensors are reported missing (left at their initialisation).
    default = default_config(m.name)
    values = {}
    for f in dataclasses.fields(w):
        if f.name == "name":
            continue
        mine, theirs, dflt = getattr(m, f.name), getattr(w, f.name), getattr(default, f.name)
        if mine == dflt or mine == theirs:
            values[f.name] = theirs
        elif _training_only(f.name):
            values[f.name] = mine
        else:
            raise ConfigError(f"model.{f.name}={mine!r} conflicts with the weights ({weights.path} has "
                              f"{f.name}={theirs!r}); drop that setting or use other weights")
    # The checkpoint's own ImageNet file (a path on the machine that trained it) is not needed: its
    # backbone tensors are in the checkpoint.
    values.update(weights=m.weights, weights_config=m.weights_config, weights_updates=list(m.weights_updates),
                  keep_classes=list(m.keep_classes), class_names=list(m.class_names),
                  num_classes=m.num_classes, backbone_weights=m.backbone_weights)
    for name in getattr(type(w), "class_count_fields", ()):
        values[name] = None  # follows the (dataset's) class count
    return replace(cfg, model=replace(m, **values))


# ---------------------------------------------------------------- loading


@dataclass
class LoadReport:
    source: str
    kind: str
    num_classes: int
    loaded: List[str] = field(default_factory=list)
    kept_rows: List[str] = field(default_factory=list)  # class tensors built from chosen checkpoint rows
    reinitialised: List[str] = field(default_factory=list)
    unused: List[str] = field(default_factory=list)  # checkpoint keys the model has no place for
    missing: List[str] = field(default_factory=list)  # model keys the checkpoint lacks (left at init)
    notes: List[str] = field(default_factory=list)

    def counts(self) -> Dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("loaded", "kept_rows", "reinitialised", "unused", "missing")}

    def text(self) -> str:
        from edgedet.checkpoints.official_state_dict import group_keys

        c = self.counts()
        lines = [f"weights {self.source} ({self.kind}): {c['loaded']} tensors loaded, {c['kept_rows']} class tensors "
                 f"from kept rows, {c['reinitialised']} re-initialised for {self.num_classes} classes, "
                 f"{c['unused']} unused, {c['missing']} missing"]
        for what in ("kept_rows", "reinitialised", "unused", "missing"):
            keys = getattr(self, what)
            if keys:
                lines.append(f"  {what.replace('_', ' ')}: {group_keys(keys)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def save(self, out_dir: Union[str, Path]) -> Path:
        """Writes load_report.txt (the text) and load_report.json (every key) into `out_dir`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from runtime.atomic import atomic_write_text

        atomic_write_text(out / "load_report.json", json.dumps({**dataclasses.asdict(self), "counts": self.counts()}, indent=1))
        atomic_write_text(out / "load_report.txt", self.text() + "\n")
        return out / "load_report.txt"


def _class_row(entry: Union[str, int], names: Sequence[str], count: int, path: Path) -> int:
    if isinstance(entry, int):
        if not 0 <= entry < count:
            raise ConfigError(f"model.keep_classes entry {entry} is out of range: {path} has {count} classes")
        return entry
    if entry not in names:
        hint = f"its classes: {', '.join(n for n in names if n != 'N/A')}" if names else \
            "its class names are unknown: give row indices instead"
        raise ConfigError(f"model.keep_classes entry '{entry}' is not a class of {path} ({hint})")
    return list(names).index(entry)


def _load_imagenet(model: nn.Module, weights: PretrainedWeights, report: LoadReport) -> None:
    from edgedet.nn.backbone import load_torchvision_weights

    body = getattr(getattr(model, "backbone", None), "body", None)
    if body is None:
        raise ConfigError(f"{type(model).__name__} has no ResNet backbone to load ImageNet weights {weights.path} into")
    load_torchvision_weights(body, weights.path)
    report.loaded = [f"backbone.body.{k}" for k in body.state_dict() if not k.endswith("num_batches_tracked")]
    report.missing = [k for k in model.state_dict() if not k.startswith("backbone.body.")]
    report.notes.append("ImageNet backbone: every tensor outside backbone.body keeps its initialisation")


def load_pretrained(model: nn.Module, weights: PretrainedWeights, keep_classes: Sequence[Union[str, int]] = ()) -> LoadReport:
    """Copy `weights` into `model` (built for the dataset's classes) and say what happened."""
    from edgedet.checkpoints.official_state_dict import group_keys

    cfg = model.config
    report = LoadReport(str(weights.path), weights.kind, cfg.num_classes)
    if keep_classes and weights.config is None:
        raise ConfigError("model.keep_classes needs detector weights; an ImageNet backbone has no class head")
    if weights.kind == "imagenet":
        _load_imagenet(model, weights, report)
        return report
    src, src_count, src_names = weights.state, weights.config.num_classes, weights.class_names
    rows = None
    if keep_classes:
        if len(keep_classes) != cfg.num_classes:
            raise ConfigError(f"model.keep_classes has {len(keep_classes)} entries but the dataset has {cfg.num_classes} "
                              f"classes ({', '.join(cfg.class_names)}): give one checkpoint class per dataset class, in order")
        rows = [_class_row(c, src_names, src_count, weights.path) for c in keep_classes]
    same_classes = rows is None and bool(src_names) and list(src_names) == list(cfg.class_names)
    class_keys = set(model.class_dependent_keys()) if hasattr(model, "class_dependent_keys") else set()
    rows_per_class = getattr(model, "class_rows_per_class", lambda key: 1)
    own = model.state_dict(keep_vars=True)
    twins: Dict[int, List[str]] = {}
    for k, v in own.items():
        twins.setdefault(id(v), []).append(k)
    new_values: Dict[str, Tensor] = {}
    wrong_shape: List[str] = []
    for k, t in own.items():
        s = src.get(k)
        if s is None:  # a tied tensor the checkpoint saved under another of its names
            s = next((src[a] for a in twins[id(t)] if a in src), None)
        if s is None:
            if not k.endswith("num_batches_tracked"):  # counters of live BatchNorm carry no weights
                report.missing.append(k)
            continue
        if k in class_keys:
            per = rows_per_class(k)  # a per-class box regressor owns 4 rows per class
            extra = t.shape[0] - per * cfg.num_classes  # e.g. DETR's "no object" row, label_enc's spare row
            if same_classes and s.shape == t.shape:
                new_values[k] = s
                report.loaded.append(k)
            elif rows is not None and s.shape[0] - extra == per * src_count and s.shape[1:] == t.shape[1:]:
                index = [r * per + j for r in rows for j in range(per)] + [per * src_count + j for j in range(extra)]
                new_values[k] = s[index]
                report.kept_rows.append(k)
            else:
                report.reinitialised.append(k)
            continue
        if s.shape != t.shape:
            wrong_shape.append(k)
            continue
        new_values[k] = s
        report.loaded.append(k)
    if wrong_shape:
        k = wrong_shape[0]
        raise ConfigError(f"{weights.path} does not fit the {type(model).__name__} model: {len(wrong_shape)} tensors "
                          f"of another shape (e.g. {k}: weights {list(src[k].shape)}, model {list(own[k].shape)}): "
                          f"{group_keys(wrong_shape)}")
    report.unused = [k for k in src if k not in own and not k.endswith("num_batches_tracked")
                     and not any(a in own for a in weights.aliases.get(k, []))]
    if report.reinitialised and rows is None:
        why = "its class names are unknown" if not src_names else f"its classes are not the dataset's {cfg.class_names}"
        known = cfg.class_names and all(n in src_names for n in cfg.class_names)
        hint = f"model.keep_classes=[{','.join(cfg.class_names)}]" if known else "model.keep_classes=[...]"
        report.notes.append(f"class heads re-initialised: {why}; keep checkpoint rows with {hint}")
    with torch.no_grad():
        for k, v in new_values.items():
            own[k].copy_(v.to(own[k].dtype))
    return report


def freeze_backbone(model: nn.Module, stages: int) -> List[str]:
    """Freeze the stem and layer1..layer`stages` of `model.backbone.body` (-1: the whole backbone).
    Returns the frozen parameter names."""
    if stages == 0:
        return []
    if stages < -1 or stages > 4:
        raise ConfigError(f"train.freeze_backbone={stages}: use 0 (none), 1..4 (stem and layer1..layerN) or -1 (all)")
    frozen = []
    for name, p in model.named_parameters():
        if not name.startswith("backbone."):
            continue
        layer = name.split(".")[2] if name.startswith("backbone.body.") else ""
        stage = int(layer[5:]) if layer.startswith("layer") and layer[5:].isdigit() else 0
        if stages == -1 or stage <= stages:
            p.requires_grad_(False)
            frozen.append(name)
    if not frozen:
        raise ConfigError(f"train.freeze_backbone={stages}: {type(model).__name__} has no backbone.* parameters")
    return frozen


__all__ = ["PretrainedWeights", "LoadReport", "read_weights", "weights_family", "resolve_config", "load_pretrained",
           "freeze_backbone"]
