"""Properties every registered detector must have (the registry drives the list)."""
from __future__ import annotations

import pytest
import torch

import edgedet
from edgedet.nn.frozen_bn import FrozenBatchNorm2d
from edgedet.registry import UnknownNameError

from edgedet.registry import MODELS

TINY = dict(backbone="resnet18", num_classes=3)
# Families whose backbone is not a ResNet: their smallest one.
SMALL_BACKBONE = {"rtdetr": "presnet18", "dfine": "B0"}
NO_BATCHNORM = {"rfdetr"}  # a ViT (DINOv2) and a LayerNorm projector


def tiny(name: str) -> dict:
    return {**TINY, "backbone": SMALL_BACKBONE.get(name, TINY["backbone"])}
# The families edgedet ships (tests register toy models of their own in the same registry).
FAMILIES = [n for n in edgedet.list_models() if MODELS.get(n).__module__.startswith("edgedet.")]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("frozen", [True, False])
def test_backbone_norm_follows_config(name, frozen):
    if name in NO_BATCHNORM:
        pytest.skip(f"{name}'s backbone normalises with LayerNorm only")
    model = edgedet.create_model(name, backbone_frozen_bn=frozen, **tiny(name))
    norms = {type(m) for m in model.backbone.modules() if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d))}
    assert norms == ({FrozenBatchNorm2d} if frozen else {torch.nn.BatchNorm2d})


@pytest.mark.parametrize("name", FAMILIES)
def test_model_declares_score_activation_and_config(name):
    model = edgedet.create_model(name, **tiny(name))
    assert model.score_activation in ("sigmoid", "softmax")
    assert model.config.name == name and model.config.num_classes == 3


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(UnknownNameError) as err:
        edgedet.create_model("dino_v3")
    assert "Did you mean 'dino'" in str(err.value) and "deformable_detr" in str(err.value)
