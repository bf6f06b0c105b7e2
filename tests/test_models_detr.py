"""DETR: reference parity on the official-format fixture, every config variant trains, masks work."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgedet.config import ConfigError
from edgedet.models.detr import DETR, DETRConfig
from edgedet.models.factory import create_model, default_config
from edgedet.registry import UnknownNameError

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "reference" / "detr"

TINY = dict(backbone="resnet18", hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64,
            num_queries=10, num_classes=5)
VARIANTS = {
    "sine": dict(position_embedding="sine"),
    "learned": dict(position_embedding="learned"),
    "pre_norm": dict(pre_norm=True),
}


def official_state(path: Path) -> dict:
    """Official checkpoint -> our keys: only the backbone prefix differs."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {k.replace("backbone.0.body.", "backbone.body.", 1): v.float() for k, v in ckpt["model"].items()}


def flatten_outputs(out: dict, prefix: str) -> dict:
    flat = {f"{prefix}.pred_logits": out["pred_logits"], f"{prefix}.pred_boxes": out["pred_boxes"]}
    for i, aux in enumerate(out["aux_outputs"]):
        flat.update({f"{prefix}.aux_outputs.{i}.{k}": v for k, v in aux.items()})
    return flat


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared reference fixtures not available")
def test_matches_official_reference_outputs():
    cfg = DETRConfig(backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=2, dec_layers=2, dim_feedforward=128,
                     num_queries=30, num_classes=91)
    model = DETR(cfg).eval()
    model.load_state_dict(official_state(FIXTURES / "checkpoint.pth"), strict=True)
    inputs, expected = np.load(FIXTURES / "inputs.npz"), np.load(FIXTURES / "outputs.npz")
    got = {}
    with torch.no_grad():
        for img in ("img0", "img1"):
            got.update(flatten_outputs(model(torch.from_numpy(inputs[img])), img))
    assert sorted(got) == sorted(expected.files)
    for key in expected.files:
        np.testing.assert_allclose(got[key].numpy(), expected[key], rtol=0, atol=1e-4, err_msg=key)


def _batch(seed: int = 0):
    """Two 64x80 images; the second is 64x48 padded on the right."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 64, 80, generator=g)
    mask = torch.zeros(2, 64, 80, dtype=torch.bool)
    images[1, :, :, 48:] = 0
    mask[1, :, 48:] = True
    return images, mask


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_forward_backward(variant):
    torch.manual_seed(0)
    model = create_model("detr", **TINY, **VARIANTS[variant]).train()
    images, mask = _batch()
    out = model(images, mask)
    assert out["pred_logits"].shape == (2, 10, 6)  # 5 classes + no-object
    assert out["pred_boxes"].shape == (2, 10, 4)
    assert len(out["aux_outputs"]) == 1 and out["aux_outputs"][0]["pred_boxes"].shape == (2, 10, 4)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    loss = out["pred_logits"].square().mean() + out["pred_boxes"].mean()
    loss = loss + sum(a["pred_logits"].square().mean() + a["pred_boxes"].mean() for a in out["aux_outputs"])
    loss.backward()
    for name in ("class_embed.weight", "bbox_embed.layers.0.weight", "query_embed.weight", "input_proj.weight",
                 "transformer.encoder.layers.0.self_attn.in_proj_weight",
                 "transformer.decoder.layers.1.multihead_attn.in_proj_weight", "backbone.body.layer4.0.conv1.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    if variant == "learned":
        assert model.position_embedding.row_embed.weight.grad.abs().sum() > 0


def _local_features(model: DETR) -> None:
    """Swap the ResNet for a strictly local stride-32 feature map so padding cannot leak in
    through convolution borders; what remains is the masking done by the detector itself."""
    mix = torch.randn(model.backbone.num_channels[-1], 3, generator=torch.Generator().manual_seed(1))

    def forward_features(x):
        return [None, None, None, torch.einsum("bchw,dc->bdhw", F.avg_pool2d(x, 32), mix).relu()]

    model.backbone.body.forward_features = forward_features


@pytest.mark.parametrize("variant", ["sine", "pre_norm"])
def test_padding_mask_makes_padding_invisible(variant):
    torch.manual_seed(0)
    model = create_model("detr", **TINY, **VARIANTS[variant]).eval()
    _local_features(model)
    g = torch.Generator().manual_seed(2)
    image = torch.randn(1, 3, 64, 64, generator=g)
    batch = torch.randn(2, 3, 64, 96, generator=g) * 3  # padding filled with garbage, not zeros
    batch[0, :, :, :64] = image[0]
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[0, :, 64:] = True
    with torch.no_grad():
        alone = model(image)
        padded = model(batch, mask)
        unmasked = model(batch)
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(padded[key][:1], alone[key], rtol=0, atol=1e-4)
    assert (unmasked["pred_logits"][:1] - alone["pred_logits"]).abs().max() > 1e-3  # the mask is what hides it


def test_criterion_weights_and_loss():
    torch.manual_seed(0)
    model = create_model("detr", **TINY).train()
    criterion = model.build_criterion()
    images, mask = _batch()
    targets = [
        {"labels": torch.tensor([1, 4]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4]])},
        {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.6]])},
    ]
    losses = criterion(model(images, mask), targets)
    for key in ("loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_bbox_0", "loss_giou_0"):
        assert key in losses and key in criterion.weight_dict, key
    assert criterion.weight_dict["loss_bbox"] == 5.0 and criterion.weight_dict["loss_giou_0"] == 2.0
    total = sum(losses[k] * criterion.weight_dict[k] for k in losses)
    assert torch.isfinite(total)
    total.backward()
    assert model.class_embed.weight.grad.abs().sum() > 0


def test_defaults_and_errors():
    cfg = default_config("detr")
    assert (cfg.hidden_dim, cfg.nheads, cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward) == (256, 8, 6, 6, 2048)
    assert (cfg.num_queries, cfg.eos_coef, cfg.backbone, cfg.pre_norm) == (100, 0.1, "resnet50", False)
    assert DETR.score_activation == "softmax"
    with pytest.raises(UnknownNameError, match="learned"):
        create_model("detr", **{**TINY, "position_embedding": "fourier"})
    with pytest.raises(ConfigError):
        create_model("detr", hidden_dimension=3)
    with pytest.raises(ValueError, match="divisible"):
        DETR(DETRConfig(**{**TINY, "nheads": 5}))
