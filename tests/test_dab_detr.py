"""DAB-DETR: official key layout, forward/backward on a tiny config, layer-by-layer anchor updates."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgedet.config import from_dict, to_dict
from edgedet.models.dab_detr import DABDETR, DABDETRConfig
from edgedet.models.factory import create_model, default_config
from edgedet.nn.dab_transformer import make_activation

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "reference" / "dab_detr"

TINY = dict(backbone="resnet18", hidden_dim=32, nheads=2, enc_layers=1, dec_layers=3, dim_feedforward=64,
            num_queries=7, num_classes=3)


def tiny_model(**overrides) -> DABDETR:
    torch.manual_seed(0)
    return create_model("dab_detr", **{**TINY, **overrides})


def images_and_mask():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 96, generator=g)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, :, 64:] = True  # second image is 64x64, padded on the right
    images[1, :, :, 64:] = 0
    return images, mask


def randomise_box_head(model: DABDETR) -> None:
    """The box head's last layer starts at zero (no correction); give it weights so anchors move."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        last = model.bbox_embed.layers[-1]
        last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 0.5)
        last.bias.copy_(torch.randn(last.bias.shape, generator=g) * 0.5)


def test_default_config_follows_the_official_recipe():
    cfg = default_config("dab_detr")
    assert isinstance(cfg, DABDETRConfig)
    assert (cfg.hidden_dim, cfg.nheads, cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward) == (256, 8, 6, 6, 2048)
    assert (cfg.dropout, cfg.num_queries, cfg.activation, cfg.modulate_hw_attn) == (0.0, 300, "prelu", True)
    assert (cfg.cls_loss_coef, cfg.bbox_loss_coef, cfg.giou_loss_coef) == (1.0, 5.0, 2.0)
    assert (cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou, cfg.focal_alpha) == (2.0, 5.0, 2.0, 0.25)
    assert (cfg.pe_temperature_h, cfg.pe_temperature_w) == (20.0, 20.0)
    assert from_dict(DABDETRConfig, to_dict(cfg)) == cfg
    assert DABDETR.score_activation == "sigmoid"


@pytest.mark.skipif(not (FIXTURES / "meta.json").is_file(), reason="shared reference fixtures not available")
def test_parameter_names_and_shapes_mirror_the_official_state_dict():
    meta = json.loads((FIXTURES / "meta.json").read_text())
    official = {k.replace("backbone.0.body.", "backbone.body.", 1): shape for k, shape, _ in meta["state_dict_keys"]}
    a = meta["args"]
    model = create_model("dab_detr", backbone=a["backbone"], hidden_dim=a["hidden_dim"], nheads=a["nheads"],
                         enc_layers=a["enc_layers"], dec_layers=a["dec_layers"], dim_feedforward=a["dim_feedforward"],
                         num_queries=a["num_queries"])
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(ours) == sorted(official)
    assert ours == official
    # The decoder's anchor updates use the detector's own box head (tied, as in the official model).
    assert model.transformer.decoder.bbox_embed is model.bbox_embed


def test_forward_shapes_and_box_range():
    model = tiny_model().eval()
    images, mask = images_and_mask()
    with torch.no_grad():
        out = model(images, mask)
    assert out["pred_logits"].shape == (2, 7, 3)
    assert out["pred_boxes"].shape == (2, 7, 4)
    assert len(out["aux_outputs"]) == 2
    for o in [out] + out["aux_outputs"]:
        assert torch.isfinite(o["pred_logits"]).all()
        assert ((o["pred_boxes"] > 0) & (o["pred_boxes"] < 1)).all()
    # Without a mask the first (unpadded) image gives the same result.
    with torch.no_grad():
        single = model(images[:1])
    torch.testing.assert_close(single["pred_boxes"], out["pred_boxes"][:1], atol=1e-5, rtol=0)


def test_anchors_are_refined_layer_by_layer():
    model = tiny_model().eval()
    images, mask = images_and_mask()
    with torch.no_grad():
        at_init = model(images, mask)
        # At initialisation the last box layer is zero, so every layer predicts the learned anchor itself.
        anchors = model.refpoint_embed.weight.sigmoid()
        torch.testing.assert_close(at_init["pred_boxes"], anchors.expand(2, -1, -1), atol=1e-3, rtol=0)
        randomise_box_head(model)
        out = model(images, mask)
    boxes = [a["pred_boxes"] for a in out["aux_outputs"]] + [out["pred_boxes"]]
    for earlier, later in zip(boxes[:-1], boxes[1:]):
        assert (earlier - later).abs().max() > 1e-3
    # Each layer's box = its correction applied to the previous layer's box (the anchor it was given).
    with torch.no_grad():
        src, feat_mask = model.backbone(images, mask)[-1]
        pos = model.position_embedding(feat_mask)
        hs, layer_anchors = model.transformer(model.input_proj(src), feat_mask, model.refpoint_embed.weight, pos)
    torch.testing.assert_close(layer_anchors[0], anchors.expand(2, -1, -1))
    for i in range(1, len(boxes)):
        assert (layer_anchors[i] - layer_anchors[i - 1]).abs().max() > 1e-3


def test_backward_reaches_anchors_and_every_trainable_parameter():
    model = tiny_model()
    randomise_box_head(model)
    model.train()
    images, mask = images_and_mask()
    targets = [
        {"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]
    criterion = model.build_criterion()
    losses = criterion(model(images, mask), targets)
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_giou_1"} <= set(losses)
    total = sum(criterion.weight_dict[k] * v for k, v in losses.items() if criterion.weight_dict.get(k, 0) > 0)
    assert torch.isfinite(total)
    total.backward()
    assert model.refpoint_embed.weight.grad is not None and model.refpoint_embed.weight.grad.abs().sum() > 0
    no_grad = {n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)}
    # The first layer's content queries are zeros, so only the biases of its content projections learn there.
    assert no_grad == {f"transformer.decoder.layers.0.{m}.weight" for m in ("sa_qcontent_proj", "sa_kcontent_proj", "sa_v_proj")}


def test_query_position_projection_only_where_used():
    model = tiny_model()
    has = [layer.ca_qpos_proj is not None for layer in model.transformer.decoder.layers]
    assert has == [True, False, False]
    kept = tiny_model(keep_query_pos=True)
    assert all(layer.ca_qpos_proj is not None for layer in kept.transformer.decoder.layers)
    assert not any("ref_anchor_head" in k for k in tiny_model(modulate_hw_attn=False).state_dict())


def test_patterns_multiply_the_queries():
    model = tiny_model(num_patterns=2, activation="relu").eval()
    images, mask = images_and_mask()
    with torch.no_grad():
        out = model(images, mask)
    assert out["pred_logits"].shape == (2, 14, 3)
    assert "transformer.patterns.weight" in model.state_dict()
    assert not any(k.endswith("activation.weight") for k in model.state_dict())


def test_unknown_activation_lists_valid_names():
    with pytest.raises(ValueError, match="prelu"):
        make_activation("swishy")
