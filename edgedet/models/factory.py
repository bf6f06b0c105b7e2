"""`create_model(name, **overrides)` and `list_models()` over the model registry.

A family registers its builder with its config class:

    @MODELS.register("detr", config=DETRConfig)
    def build_detr(cfg: DETRConfig) -> DETR: ...
"""
from __future__ import annotations

import dataclasses
from typing import Any, List

from torch import nn

from edgedet.config import ConfigError, ModelConfig, from_dict, to_dict
from edgedet.registry import MODELS


def list_models() -> List[str]:
    return MODELS.names()


def default_config(name: str) -> ModelConfig:
    return MODELS.meta(name)["config"](name=name)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered detector; keyword overrides are validated against its config."""
    cfg = default_config(name)
    if overrides:
        data = to_dict(cfg)
        data.update(overrides)
        cfg = from_dict(type(cfg), data, "model")
    return create_model_from_config(cfg)


def create_model_from_config(cfg: ModelConfig) -> nn.Module:
    builder = MODELS.get(cfg.name)
    expected = MODELS.meta(cfg.name)["config"]
    if not isinstance(cfg, expected):
        raise ConfigError(f"model '{cfg.name}' needs a {expected.__name__}, got {type(cfg).__name__}")
    model = builder(cfg)
    model.config = dataclasses.replace(cfg)
    return model
