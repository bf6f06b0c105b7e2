"""Deformable DETR: reference parity, every variant trains, masks and tiny/non-square inputs work."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgedet.config import ConfigError
from edgedet.models.deformable_detr import DeformableDETR, DeformableDETRConfig
from edgedet.models.factory import create_model, default_config
from edgedet.nn.deformable_transformer import (
    DeformableTransformer,
    encoder_output_proposals,
    encoder_reference_points,
    flatten_levels,
)
from edgedet.nn.mlp import MLP
from edgedet.nn.position_encoding import PositionEmbeddingSine

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "reference" / "deformable_detr"

TINY = dict(backbone="resnet18", hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64,
            num_queries=10, num_classes=5, enc_n_points=2, dec_n_points=2)
VARIANTS = {
    "single_stage": {},
    "box_refine": dict(with_box_refine=True),
    "two_stage": dict(with_box_refine=True, two_stage=True),
}


def official_state(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {k.replace("backbone.0.body.", "backbone.body.", 1): v.float() for k, v in ckpt["model"].items()}


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared reference fixtures not available")
def test_matches_official_reference_outputs():
    cfg = DeformableDETRConfig(backbone="resnet50", hidden_dim=64, nheads=4, enc_layers=2, dec_layers=2,
                               dim_feedforward=128, num_queries=30, num_classes=91, enc_n_points=2, dec_n_points=2)
    model = DeformableDETR(cfg).eval()
    state = official_state(FIXTURES / "checkpoint.pth")
    assert sorted(model.state_dict()) == sorted(state)
    model.load_state_dict(state, strict=True)
    inputs, expected = np.load(FIXTURES / "inputs.npz"), np.load(FIXTURES / "outputs.npz")
    got = {}
    with torch.no_grad():
        for img in ("img0", "img1"):
            out = model(torch.from_numpy(inputs[img]))
            got[f"{img}.pred_logits"], got[f"{img}.pred_boxes"] = out["pred_logits"], out["pred_boxes"]
            for i, aux in enumerate(out["aux_outputs"]):
                got.update({f"{img}.aux_outputs.{i}.{k}": v for k, v in aux.items()})
    assert sorted(got) == sorted(expected.files)
    for key in expected.files:
        np.testing.assert_allclose(got[key].numpy(), expected[key], rtol=0, atol=1e-4, err_msg=key)


def _batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 80, generator=g)
    mask = torch.zeros(2, 64, 80, dtype=torch.bool)
    images[1, :, 40:, :] = 0
    mask[1, 40:, :] = True
    return images, mask


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_forward_backward(variant):
    torch.manual_seed(0)
    model = create_model("deformable_detr", **TINY, **VARIANTS[variant]).train()
    with torch.no_grad():  # move off the init, where zero sampling-offset weights block some paths
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    images, mask = _batch()
    out = model(images, mask)
    assert out["pred_logits"].shape == (2, 10, 5)
    assert out["pred_boxes"].shape == (2, 10, 4)
    assert len(out["aux_outputs"]) == 1
    outputs = [out] + out["aux_outputs"]
    if variant == "two_stage":
        tokens = 8 * 10 + 4 * 5 + 2 * 3 + 1 * 2
        assert out["enc_outputs"]["pred_logits"].shape == (2, tokens, 5)
        assert out["enc_outputs"]["pred_boxes"].shape == (2, tokens, 4)
        # a padded token (image 1, level 0, row 7) proposes nothing: its box saturates at 1
        assert (out["enc_outputs"]["pred_boxes"][1, 70] == 1).all()
        outputs.append(out["enc_outputs"])
    else:
        assert "enc_outputs" not in out
    loss = sum(o["pred_logits"].sigmoid().mean() + o["pred_boxes"].mean() for o in outputs)
    loss.backward()
    params = dict(model.named_parameters(remove_duplicate=False))
    names = ["class_embed.0.weight", "bbox_embed.0.layers.0.weight", "input_proj.0.0.weight", "input_proj.3.0.weight",
             "transformer.level_embed", "transformer.encoder.layers.0.self_attn.sampling_offsets.weight",
             "transformer.decoder.layers.1.cross_attn.value_proj.weight",
             "transformer.decoder.layers.1.self_attn.in_proj_weight", "backbone.body.layer2.0.conv1.weight"]
    names.append("transformer.enc_output.weight" if variant == "two_stage" else "transformer.reference_points.weight")
    if variant != "single_stage":
        names.append("bbox_embed.1.layers.2.weight")  # per-layer heads with refinement
    for name in names:
        grad = params[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_official_head_layout():
    """Tied heads without refinement, decoder-owned heads with refinement/two-stage (official keys)."""
    plain = create_model("deformable_detr", **TINY)
    assert plain.class_embed[0] is plain.class_embed[1] and plain.transformer.decoder.bbox_embed is None
    assert "query_embed.weight" in plain.state_dict() and plain.query_embed.weight.shape == (10, 64)
    two = create_model("deformable_detr", **TINY, **VARIANTS["two_stage"])
    keys = set(two.state_dict())
    assert {"transformer.decoder.bbox_embed.2.layers.2.bias", "transformer.decoder.class_embed.2.weight",
            "transformer.enc_output.weight", "transformer.pos_trans_norm.bias"} <= keys
    assert "query_embed.weight" not in keys and "transformer.reference_points.weight" not in keys
    assert two.class_embed[0] is not two.class_embed[1]


@pytest.mark.parametrize("size", [(16, 16), (32, 96), (96, 40)])
def test_tiny_and_non_square_inputs(size):
    torch.manual_seed(0)
    # hidden 64: GroupNorm(32) needs two channels per group when the stride-64 map is 1x1
    model = create_model("deformable_detr", **{**TINY, "hidden_dim": 64}, with_box_refine=True).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out["pred_boxes"].shape == (1, 10, 4) and torch.isfinite(out["pred_logits"]).all()


def test_two_stage_needs_enough_tokens():
    model = create_model("deformable_detr", **{**TINY, "num_queries": 200, "hidden_dim": 64}, **VARIANTS["two_stage"])
    with pytest.raises(ValueError, match="encoder tokens"):
        model(torch.randn(1, 3, 64, 64))  # 64 + 16 + 4 + 1 tokens


@pytest.mark.parametrize("box_refine", [False, True])
def test_transformer_ignores_padding(box_refine):
    """Behind the input projection (whose GroupNorm sees padding, as in the reference) the
    transformer gives the same answer for a map alone and for it padded with garbage."""
    torch.manual_seed(0)
    c, shapes = 32, [(8, 8), (4, 4), (2, 2)]
    tr = DeformableTransformer(c, 4, 2, 2, 64, 0.0, "relu", 3, 2, 2).eval()
    if box_refine:
        heads = torch.nn.ModuleList(MLP(c, c, 4, 3) for _ in range(2))
        tr.decoder.bbox_embed = heads
    pos_embed = PositionEmbeddingSine(c // 2, offset=0.5)
    query = torch.randn(6, 2 * c)
    alone_srcs = [torch.randn(1, c, h, w) for h, w in shapes]
    padded_srcs, padded_masks = [], []
    for src, (h, w) in zip(alone_srcs, shapes):
        big = torch.randn(2, c, h, w + w // 2) * 5
        big[0, :, :, :w] = src[0]
        m = torch.zeros(2, h, w + w // 2, dtype=torch.bool)
        m[0, :, w:] = True
        padded_srcs.append(big)
        padded_masks.append(m)
    alone_masks = [torch.zeros(1, h, w, dtype=torch.bool) for h, w in shapes]
    with torch.no_grad():
        hs_a, ref_a, inter_a, _, _ = tr(alone_srcs, alone_masks, [pos_embed(m) for m in alone_masks], query)
        hs_p, ref_p, inter_p, _, _ = tr(padded_srcs, padded_masks, [pos_embed(m) for m in padded_masks], query)
    torch.testing.assert_close(hs_p[:, :1], hs_a, rtol=0, atol=1e-4)
    torch.testing.assert_close(inter_p[:, :1], inter_a, rtol=0, atol=1e-5)


def test_layout_helpers():
    masks = [torch.zeros(2, 4, 6, dtype=torch.bool), torch.zeros(2, 2, 3, dtype=torch.bool)]
    masks[0][1, :, 3:] = True
    masks[1][1, :, 2:] = True
    feats = [torch.randn(2, 8, *m.shape[1:]) for m in masks]
    level_embed = torch.randn(2, 8)
    src, mask, pos, shapes, starts, ratios = flatten_levels(feats, masks, feats, level_embed)
    assert src.shape == (2, 30, 8) and shapes.tolist() == [[4, 6], [2, 3]] and starts.tolist() == [0, 24]
    torch.testing.assert_close(pos[:, 24:], feats[1].flatten(2).transpose(1, 2) + level_embed[1])
    torch.testing.assert_close(ratios[1], torch.tensor([[0.5, 1.0], [2 / 3, 1.0]]))
    ref = encoder_reference_points(shapes, ratios, src.device)
    assert ref.shape == (2, 30, 2, 2)
    # first token of image 0 sits in the centre of the top-left cell of a 4x6 map
    torch.testing.assert_close(ref[0, 0, 0], torch.tensor([0.5 / 6, 0.5 / 4]))
    memory, proposals = encoder_output_proposals(src, mask, shapes)
    assert torch.isinf(proposals[1, 3]).all() and (memory[1, 3] == 0).all()  # padded token of image 1
    torch.testing.assert_close(proposals[0, 0].sigmoid(), torch.tensor([0.5 / 6, 0.5 / 4, 0.05, 0.05]))


def test_criterion_and_config():
    torch.manual_seed(0)
    model = create_model("deformable_detr", **TINY, **VARIANTS["two_stage"]).train()
    criterion = model.build_criterion()
    for key in ("loss_ce", "loss_bbox_0", "loss_giou_enc"):
        assert key in criterion.weight_dict
    assert criterion.weight_dict["loss_ce"] == 2.0 and criterion.weight_dict["loss_bbox_enc"] == 5.0
    images, mask = _batch()
    targets = [{"labels": torch.tensor([2]), "boxes": torch.tensor([[0.4, 0.5, 0.3, 0.3]])},
               {"labels": torch.tensor([0, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.2, 0.3]])}]
    losses = criterion(model(images, mask), targets)
    assert {"loss_ce_enc", "loss_giou_0"} <= set(losses)
    total = sum(losses[k] * criterion.weight_dict[k] for k in losses)
    assert torch.isfinite(total)
    cfg = default_config("deformable_detr")
    assert (cfg.num_queries, cfg.dim_feedforward, cfg.num_feature_levels, cfg.enc_n_points) == (300, 1024, 4, 4)
    assert DeformableDETR.score_activation == "sigmoid"
    with pytest.raises(ConfigError, match="with_box_refine"):
        create_model("deformable_detr", **TINY, two_stage=True)
    with pytest.raises(ConfigError, match="num_feature_levels"):
        create_model("deformable_detr", **TINY, num_feature_levels=2)
