"""Typed config: YAML round trips, dotted overrides and the errors for bad keys and values."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import pytest

from edgedet.config import (
    ConfigError,
    DataConfig,
    ExperimentConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_experiment,
    save_yaml,
    to_dict,
)
from edgedet.models import default_config


def _experiment() -> ExperimentConfig:
    model = default_config("detr")
    model.num_classes = 3
    model.class_names = ["circle", "square", "triangle"]
    data = DataConfig(format="voc", root="/data/bccd", scales=[224, 256], mean=(0.5, 0.5, 0.5), class_names=["a", "b"])
    return ExperimentConfig(model=model, data=data, train=TrainConfig(epochs=3, lr=2e-4, amp=True))


def test_experiment_yaml_round_trip(tmp_path):
    cfg = _experiment()
    save_yaml(cfg, tmp_path / "exp.yaml")
    back = load_experiment(tmp_path / "exp.yaml")
    assert back == cfg
    assert type(back.model) is type(cfg.model)
    assert isinstance(back.data.mean, tuple) and back.data.mean == (0.5, 0.5, 0.5)
    assert to_dict(back) == to_dict(cfg)


@dataclass
class _Inner:
    size: Tuple[int, int] = (2, 3)
    tags: List[str] = field(default_factory=list)


@dataclass
class _Outer:
    name: str = "x"
    ratio: float = 0.5
    path: Optional[str] = None
    inner: _Inner = field(default_factory=_Inner)


def test_nested_dataclass_round_trip():
    cfg = _Outer(name="y", ratio=2.0, path="/p", inner=_Inner((4, 5), ["a"]))
    assert from_dict(_Outer, to_dict(cfg)) == cfg
    assert from_dict(_Outer, {"ratio": 3}).ratio == 3.0  # ints are accepted as floats
    assert from_dict(_Outer, {"path": None}).path is None


def test_apply_overrides_happy_path():
    cfg = apply_overrides(
        _experiment(),
        ["model.num_queries=50", "train.lr=1e-3", "data.scales=[128, 160]", "data.std=[0.2, 0.2, 0.2]",
         "data.format=coco", "train.amp=false"],
    )
    assert cfg.model.num_queries == 50 and cfg.train.lr == pytest.approx(1e-3) and cfg.train.amp is False
    assert cfg.data.scales == [128, 160] and cfg.data.std == (0.2, 0.2, 0.2) and cfg.data.format == "coco"
    assert cfg.model.class_names == ["circle", "square", "triangle"]  # untouched fields survive
    only_train = apply_overrides(TrainConfig(), ["epochs=7"])
    assert only_train.epochs == 7


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        apply_overrides(_experiment(), ["train.lrr=0.1"])
    msg = str(err.value)
    assert "train.lrr" in msg and "lr_backbone_mult" in msg and "weight_decay" in msg
    with pytest.raises(ConfigError, match="Valid keys of config: model, data, train"):
        apply_overrides(_experiment(), ["optim.lr=0.1"])
    with pytest.raises(ConfigError, match="unknown config key 'data.colour'.*skip_corrupt"):
        from_dict(DataConfig, {"colour": 1}, "data")
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(_experiment(), ["train.lr"])


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        apply_overrides(_experiment(), ["train.epochs=abc"])
    with pytest.raises(ConfigError, match="data.hflip: expected a number"):
        apply_overrides(_experiment(), ["data.hflip=true"])
    with pytest.raises(ConfigError, match="expected 3 values"):
        apply_overrides(_experiment(), ["data.mean=[0.5, 0.5]"])
    with pytest.raises(ConfigError, match="expected a list"):
        apply_overrides(_experiment(), ["data.scales=256"])


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_experiment(tmp_path / "none.yaml")


def test_yaml_scientific_notation_is_a_float(tmp_path):
    # PyYAML (YAML 1.1) reads `1e-4` as a string; the config must still take it as a number
    (tmp_path / "exp.yaml").write_text("model: {name: detr}\ntrain: {lr: 1e-4, weight_decay: 5E-2}\n")
    cfg = load_experiment(tmp_path / "exp.yaml")
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.train.weight_decay == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="train.lr: expected a number"):
        apply_overrides(cfg, ["train.lr=fast"])
