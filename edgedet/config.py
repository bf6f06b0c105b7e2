"""Typed configuration: dataclasses that round-trip through YAML, with dotted overrides.

`ExperimentConfig` = model (a family's `ModelConfig` subclass, chosen by `model.name`)
+ data + train. It is saved inside every checkpoint and every exported artifact.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, TypeVar, Union

import yaml

from runtime.annotations.common import read_yaml  # one YAML reader: one-line errors naming file and line

T = TypeVar("T")
_SCI_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A config key that does not exist or a value of the wrong type."""


@dataclass
class ModelConfig:
    """Fields every detector family has; each family subclasses it with its own."""

    name: str = ""
    num_classes: int = 91
    backbone: str = "resnet50"
    # Local path to torchvision-format ImageNet weights; nothing is ever downloaded.
    backbone_weights: Optional[str] = None
    # FrozenBatchNorm2d suits ImageNet-initialised backbones; a backbone trained from scratch
    # needs live BatchNorm statistics.
    backbone_frozen_bn: bool = True
    hidden_dim: int = 256
    num_queries: int = 100
    aux_loss: bool = True
    class_names: List[str] = field(default_factory=list)
    # Fine-tuning (edgedet.engine.finetune): start from these weights (an `edgedet train` checkpoint,
    # an official checkpoint `load_official` reads, or a torchvision ImageNet ResNet state dict).
    weights: Optional[str] = None
    # Official weights of a family whose files carry no config (RT-DETRv2, D-FINE, DEIM): the released
    # config they were built from (CLI --config NAME) and the official override strings (--update KEY=VALUE).
    weights_config: Optional[str] = None
    weights_updates: List[str] = field(default_factory=list)
    # One entry per dataset class: the checkpoint class (name, or index) whose head rows it keeps.
    keep_classes: List[Union[str, int]] = field(default_factory=list)


@dataclass
class DataConfig:
    format: str = "synthetic"  # synthetic | coco | voc | yolo
    root: str = ""  # dataset folder (voc/yolo), images folder (coco) or cache folder (synthetic)
    train_ann: str = ""  # coco: annotation JSON; voc: split file; yolo: list file or folder
    val_ann: str = ""
    test_ann: str = ""  # the "test" split's file (as train_ann); empty: the format's own test split, if any
    train_split: str = "train"
    val_split: str = "val"
    synthetic_train_images: int = 400
    synthetic_val_images: int = 50
    synthetic_image_size: int = 256
    synthetic_num_classes: int = 3  # shapes: circle, square, triangle, star, cross, ring, hexagon, crescent
    synthetic_max_objects: int = 6
    synthetic_seed: int = 0
    synthetic_style: str = "plain"  # plain | camera (edgedet/data/camera_world.py: occlusion, blur, light, borders)
    synthetic_width: int = 0  # image width; 0 = square (synthetic_image_size is the height)
    scales: List[int] = field(default_factory=lambda: [256])  # shorter-side sizes for multi-scale resize
    max_size: int = 400
    val_size: int = 256
    random_crop: bool = False
    hflip: float = 0.5
    # Batches are padded bottom/right up to a multiple of this. 0 = what the model needs: 32 for the
    # mask-free rtdetr/dfine (their strides must divide the input), 1 (no rounding) for the others.
    size_divisor: int = 0
    # Photometric jitter [brightness, contrast, saturation, hue] (0 = off), e.g. [0.4, 0.4, 0.4, 0.1].
    color_jitter: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: Tuple[float, float, float] = (0.229, 0.224, 0.225)
    skip_corrupt: bool = False
    num_workers: int = 0
    class_names: List[str] = field(default_factory=list)  # voc/yolo label order; empty = from the data
    keep_difficult: bool = False  # voc: keep objects marked <difficult>1</difficult>
    # voc folder names under root (datasets exported by labelling tools often rename them)
    voc_annotations: str = "Annotations"
    voc_images: str = "JPEGImages"
    voc_splits: str = "ImageSets/Main"  # holds <split>.txt (one id per line) or <split>.csv (id[,split])
    # voc without split files: hold out this fraction of the images for val (shuffled with split_seed)
    val_fraction: float = 0.0
    split_seed: int = 0


@dataclass
class TrainConfig:
    output_dir: str = "runs/train/exp"  # a folder holding an earlier run gives way to exp2, exp3 ...
    epochs: int = 50
    batch_size: int = 4
    lr: float = 1e-4
    lr_backbone_mult: float = 0.1
    lr_linear_proj_mult: float = 0.1  # deformable sampling_offsets / reference_points
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.1
    scheduler: str = "step"  # step | cosine
    lr_drop_epoch: int = 40
    warmup_iters: int = 0
    # 0: train the whole backbone (as its config allows); N in 1..4: freeze the stem and layer1..layerN;
    # -1: freeze the whole backbone.
    freeze_backbone: int = 0
    amp: bool = False
    ema: bool = False
    ema_decay: float = 0.9998
    eval_every: int = 1
    seed: int = 42
    device: str = "cpu"
    max_iters_per_epoch: int = 0  # 0 = whole epoch; >0 caps it (benchmarks with a time budget)
    time_budget_s: float = 0.0  # 0 = none; >0 stops training after this many seconds
    # With time_budget_s: after each epoch, lower `epochs` to what the budget fits at the pace so far
    # (evaluations included), so the schedule (a cosine's decay) ends on time instead of being cut.
    fit_to_budget: bool = False


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------- dict / YAML round trip


def to_dict(cfg: Any) -> Dict[str, Any]:
    """Dataclass -> plain dict of YAML-safe values (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, List, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0] if args else Any, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, where) for a, v in zip(args or [Any] * len(value), value))
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str) and _SCI_FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot in the mantissa) as a string
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: Type[T], data: Dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a dict; unknown keys raise `ConfigError` listing the valid ones."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'. Valid keys{' of ' + where if where else ''}: {', '.join(names)}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def model_config_from_dict(data: Dict[str, Any]) -> ModelConfig:
    """Pick the family's config class from `data['name']` through the model registry (which imports
    edgedet.models, registering every family, on its first lookup)."""
    from edgedet.registry import MODELS

    if "name" not in data:
        raise ConfigError("model config needs a 'name' (one of: " + ", ".join(MODELS.names()) + ")")
    cfg_cls = MODELS.meta(data["name"])["config"]
    return from_dict(cfg_cls, data, "model")


def experiment_from_dict(data: Dict[str, Any]) -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"an experiment config is a mapping of sections model, data, train; got a {type(data).__name__}")
    unknown = [k for k in data if k not in ("model", "data", "train")]
    if unknown:
        raise ConfigError(f"unknown config section '{unknown[0]}'. Valid sections: model, data, train")
    return ExperimentConfig(
        model=model_config_from_dict(data.get("model", {"name": "detr"})),
        data=from_dict(DataConfig, data.get("data", {}), "data"),
        train=from_dict(TrainConfig, data.get("train", {}), "train"),
    )


def save_yaml(cfg: Any, path: Union[str, Path]) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_experiment(path: Union[str, Path]) -> ExperimentConfig:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    data = read_yaml(p) or {}
    if not isinstance(data, dict):  # a scalar or list: its characters / items are no sections
        raise ConfigError(f"{p} holds a YAML {type(data).__name__}, not a config: write sections "
                          "'model:', 'data:' and 'train:' (see configs/)")
    return experiment_from_dict(data)


# ---------------------------------------------------------------- command-line overrides


def apply_overrides(cfg: T, overrides: Sequence[str]) -> T:
    """Apply `section.key=value` strings (values parsed as YAML) and re-validate.

    >>> apply_overrides(cfg, ["model.num_queries=100", "train.lr=2e-4"])
    """
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for i, k in enumerate(keys):
            if not isinstance(node, dict) or k not in node:
                where = ".".join(keys[:i]) or "config"
                valid = ", ".join(node) if isinstance(node, dict) else "(not a section)"
                raise ConfigError(f"unknown config key '{dotted}'. Valid keys of {where}: {valid}")
            if i == len(keys) - 1:
                node[k] = yaml.safe_load(raw)
            else:
                node = node[k]
    if isinstance(cfg, ExperimentConfig):
        return experiment_from_dict(data)  # type: ignore[return-value]
    if isinstance(cfg, ModelConfig):
        return model_config_from_dict(data)  # type: ignore[return-value]
    return from_dict(type(cfg), data)
