"""DINO: contrastive denoising queries, mixed query selection, look-forward-twice, losses, 5 scales.

Numerical parity with the official checkpoint is tested with the reference fixtures elsewhere;
these tests use tiny configs (resnet18, hidden 64) so they run in seconds.
"""
from __future__ import annotations

import math

import pytest
import torch

from edgedet.models import create_model
from edgedet.models.dino import DINO, DINOConfig
from edgedet.losses.dn_criterion import DINOCriterion
from edgedet.nn.box_ops import box_cxcywh_to_xyxy
from edgedet.nn.denoising import (
    build_cdn_queries,
    build_label_encoder,
    cdn_attention_mask,
    dn_positive_indices,
    noise_labels,
    num_dn_groups,
)
from edgedet.nn.deformable_transformer import encoder_output_proposals

TINY = dict(backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64,
            num_queries=12, enc_n_points=2, dec_n_points=2, num_classes=4, dn_number=6)


def tiny_model(**overrides) -> DINO:
    torch.manual_seed(0)
    return DINO(DINOConfig(**{**TINY, **overrides}))


def targets_two_images():
    return [
        {"labels": torch.tensor([0, 2, 3]),
         "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.4, 0.1, 0.1], [0.7, 0.6, 0.2, 0.2]])},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.5, 0.3, 0.2]])},
    ]


def corner_shift_in_half_sizes(query_bbox_unsig, slots, box_cxcywh, scale):
    """|corner displacement| / (λ · half box size), per coordinate, for the queries at `slots`."""
    noised = box_cxcywh_to_xyxy(query_bbox_unsig[slots].sigmoid())
    clean = box_cxcywh_to_xyxy(box_cxcywh[None])
    half = torch.cat([box_cxcywh[2:], box_cxcywh[2:]]) / 2
    return (noised - clean).abs() / (half * scale)


# ---------------------------------------------------------------- contrastive denoising


def test_cdn_counts_layout_and_padding():
    torch.manual_seed(1)
    enc = build_label_encoder(4, 16)
    q = build_cdn_queries(targets_two_images(), enc, num_queries=12, num_classes=4, dn_number=6,
                          label_noise_ratio=0.5, box_noise_scale=0.4)
    groups = num_dn_groups(6, 3)
    assert groups == 2
    pad = 2 * 3 * groups
    assert q.dn_meta == {"pad_size": pad, "num_dn_group": groups}
    assert q.query_label.shape == (2, pad, 16) and q.query_bbox_unsig.shape == (2, pad, 4)
    assert q.attn_mask.shape == (pad + 12, pad + 12) and q.attn_mask.dtype == torch.bool
    # Image 1 has one box: in every block of 3 slots only slot 0 is filled.
    filled = q.query_label[1].abs().sum(-1) > 0
    assert filled.tolist() == [True, False, False] * (2 * groups)
    assert (q.query_bbox_unsig[1][~filled] == 0).all()
    assert (q.query_label[0].abs().sum(-1) > 0).all()
    assert build_cdn_queries([{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}], enc,
                             12, 4, 6, 0.5, 0.4) is None


def test_positive_noise_below_lambda1_and_negative_noise_between_lambda1_and_lambda2():
    torch.manual_seed(2)
    box = torch.tensor([0.5, 0.5, 0.2, 0.3])  # far from the border: clamping never acts
    scale = 0.4
    enc = build_label_encoder(4, 8)
    q = build_cdn_queries([{"labels": torch.tensor([1]), "boxes": box[None]}], enc, 5, 4, dn_number=200,
                          label_noise_ratio=0.0, box_noise_scale=scale)
    groups = q.dn_meta["num_dn_group"]
    assert groups == 200 and q.dn_meta["pad_size"] == 400
    pos = corner_shift_in_half_sizes(q.query_bbox_unsig[0], torch.arange(0, 400, 2), box, scale)
    neg = corner_shift_in_half_sizes(q.query_bbox_unsig[0], torch.arange(1, 400, 2), box, scale)
    tol = 1e-4  # sigmoid(inverse_sigmoid(x)) round trip
    assert pos.max() < 1 + tol and neg.min() > 1 - tol and neg.max() < 2 + tol
    # The draws fill their ranges (uniform magnitudes), not a degenerate corner of them.
    assert pos.max() > 0.9 and pos.min() < 0.1 and neg.min() < 1.1 and neg.max() > 1.9


def test_label_noise_rate():
    torch.manual_seed(3)
    labels = torch.randint(0, 5, (40000,))
    noised = noise_labels(labels, label_noise_ratio=0.5, num_classes=5)
    assert noised.min() >= 0 and noised.max() < 5
    # A label is redrawn with probability ratio / 2 and the new draw differs with probability 4/5.
    assert abs((noised != labels).float().mean().item() - 0.25 * 0.8) < 0.01
    assert (noise_labels(labels, 0.0, 5) == labels).all()


def test_cdn_label_embeddings_come_from_the_label_book():
    torch.manual_seed(4)
    enc = build_label_encoder(4, 16)
    tg = targets_two_images()
    q = build_cdn_queries(tg, enc, 12, 4, dn_number=6, label_noise_ratio=0.0, box_noise_scale=0.4)
    decoded = torch.cdist(q.query_label[0], enc.weight).argmin(-1)
    assert decoded.tolist() == tg[0]["labels"].tolist() * 4


def test_attention_mask_structure():
    pad, groups, nq = 12, 3, 5
    mask = cdn_attention_mask(pad, groups, nq)
    g = pad // groups
    for a in range(groups):
        for b in range(groups):
            block = mask[a * g:(a + 1) * g, b * g:(b + 1) * g]
            assert block.all() if a != b else not block.any()
    assert mask[pad:, :pad].all()  # matching queries cannot see any denoising query
    assert not mask[:, pad:].any()  # everyone sees the matching queries
    assert mask.shape == (pad + nq, pad + nq)


def test_dn_positive_indices_point_at_the_positive_copies():
    torch.manual_seed(5)
    tg = targets_two_images()
    enc = build_label_encoder(4, 8)
    q = build_cdn_queries(tg, enc, 12, 4, dn_number=6, label_noise_ratio=0.0, box_noise_scale=0.4)
    for b, (qi, ti) in enumerate(dn_positive_indices(tg, q.dn_meta)):
        assert len(qi) == len(tg[b]["labels"]) * q.dn_meta["num_dn_group"]
        assert ((qi // 3) % 2 == 0).all()  # even blocks hold the positives
        shift = (q.query_bbox_unsig[b, qi].sigmoid() - tg[b]["boxes"][ti]).abs()
        assert shift.max() < 0.4 * 0.3 + 1e-4  # within λ1 · max box size


# ---------------------------------------------------------------- model


def test_mixed_query_selection_picks_the_top_k_proposals():
    model = tiny_model().eval()
    tr = model.transformer
    torch.manual_seed(6)
    shapes = torch.tensor([[6, 5], [3, 3], [2, 2]])
    s = int(shapes.prod(1).sum())
    memory = torch.randn(2, s, 64)
    mask = torch.zeros(2, s, dtype=torch.bool)
    with torch.no_grad():
        sel = tr.select_queries(memory, mask, shapes)
        out_mem, proposals = encoder_output_proposals(memory, mask, shapes)
        out_mem = tr.enc_output_norm(tr.enc_output(out_mem))
        scores = tr.enc_out_class_embed(out_mem).max(-1)[0]
        coords = tr.enc_out_bbox_embed(out_mem) + proposals
    order = scores.argsort(dim=1, descending=True)[:, :12]
    assert torch.equal(sel["topk_indices"], order)
    assert torch.allclose(sel["refpoints_unsig"], torch.gather(coords, 1, order[..., None].expand(-1, -1, 4)))
    assert torch.allclose(sel["proposals_unsig"], torch.gather(proposals, 1, order[..., None].expand(-1, -1, 4)))


def test_eval_forward_outputs_and_interm_heads():
    model = tiny_model().eval()
    torch.manual_seed(7)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 80))
    assert out["pred_logits"].shape == (2, 12, 4) and out["pred_boxes"].shape == (2, 12, 4)
    assert len(out["aux_outputs"]) == 1
    assert "dn_meta" not in out and "dn_outputs" not in out
    interm = out["interm_outputs"]
    # The selected proposals are sorted by their best class logit.
    best = interm["pred_logits"].max(-1)[0]
    assert (best[:, :-1] >= best[:, 1:]).all()
    assert torch.equal(out["interm_outputs_for_matching_pre"]["pred_logits"], interm["pred_logits"])
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()


def test_padded_batch_gives_finite_outputs():
    model = tiny_model().eval()
    torch.manual_seed(10)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, :, 48:] = True  # second image is 64x48, padded to the right
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96), mask)
    for group in (out, out["aux_outputs"][0], out["interm_outputs"]):
        assert torch.isfinite(group["pred_logits"]).all() and torch.isfinite(group["pred_boxes"]).all()


def test_head_tying_and_state_dict_layout():
    model = tiny_model()
    assert model.bbox_embed is model.transformer.decoder.bbox_embed
    assert model.bbox_embed[0] is model.bbox_embed[1] and model.class_embed[0] is model.class_embed[1]
    assert model.transformer.enc_out_class_embed is not model.class_embed[0]
    keys = set(model.state_dict())
    for k in ("bbox_embed.1.layers.2.weight", "transformer.decoder.bbox_embed.0.layers.0.bias",
              "class_embed.0.weight", "transformer.decoder.class_embed.1.bias", "transformer.tgt_embed.weight",
              "transformer.enc_out_bbox_embed.layers.2.weight", "transformer.enc_out_class_embed.weight",
              "transformer.decoder.ref_point_head.layers.0.weight", "label_enc.weight", "input_proj.3.1.weight",
              "transformer.level_embed"):
        assert k in keys, k
    assert model.label_enc.weight.shape == (5, 64)
    assert model.transformer.decoder.ref_point_head.layers[0].in_features == 128  # 4 coords x hidden/2 sine features
    assert math.isclose(model.class_embed[0].bias[0].item(), -math.log(99), rel_tol=1e-6)


@pytest.mark.parametrize("look_forward_twice", [True, False])
def test_look_forward_twice_gradient_reaches_previous_box_head(look_forward_twice):
    model = tiny_model(dec_pred_bbox_embed_share=False, look_forward_twice=look_forward_twice).eval()
    with torch.no_grad():  # non-zero box heads so every path carries signal
        for head in model.bbox_embed:
            for p in head.parameters():
                p.normal_(0, 0.05)
    torch.manual_seed(8)
    out = model(torch.randn(1, 3, 64, 64))
    out["pred_boxes"].sum().backward()  # last layer (layer 1) only
    grad = model.bbox_embed[0].layers[2].weight.grad
    if look_forward_twice:
        assert grad is not None and grad.abs().sum() > 0
    else:
        assert grad is None or grad.abs().sum() == 0
    assert model.bbox_embed[1].layers[2].weight.grad.abs().sum() > 0


def test_training_forward_backward_with_denoising():
    model = tiny_model().train()
    crit = model.build_criterion()
    assert isinstance(crit, DINOCriterion)
    torch.manual_seed(9)
    tg = targets_two_images()
    out = model(torch.randn(2, 3, 64, 64), targets=tg)
    meta = out["dn_meta"]
    assert meta == {"pad_size": 12, "num_dn_group": 2}
    assert out["pred_logits"].shape == (2, 12, 4)
    assert out["dn_outputs"]["pred_logits"].shape == (2, 12, 4) and len(out["dn_outputs"]["aux_outputs"]) == 1
    losses = crit(out, tg)
    for k in ("loss_ce_dn", "loss_bbox_dn", "loss_giou_dn", "loss_ce_dn_0", "loss_bbox_dn_0", "loss_ce_interm",
              "loss_bbox_interm", "loss_giou_interm", "loss_ce", "loss_bbox_0"):
        assert k in losses and torch.isfinite(losses[k]), k
        assert crit.weight_dict[k] > 0
    assert losses["loss_bbox_dn"] > 0
    total = crit.total_loss(losses)
    total.backward()
    assert model.label_enc.weight.grad.abs().sum() > 0
    assert model.transformer.tgt_embed.weight.grad.abs().sum() > 0
    assert model.transformer.enc_out_class_embed.weight.grad.abs().sum() > 0


def test_training_without_boxes_gives_zero_dn_losses():
    model = tiny_model().train()
    crit = model.build_criterion()
    tg = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    out = model(torch.randn(1, 3, 64, 64), targets=tg)
    assert out["dn_meta"]["pad_size"] == 0 and "dn_outputs" not in out
    losses = crit(out, tg)
    assert losses["loss_bbox_dn"] == 0 and losses["loss_ce_dn_0"] == 0
    crit.total_loss(losses).backward()


def test_dn_loss_uses_the_fixed_assignment_and_pushes_negatives_to_background():
    model = tiny_model()
    crit = model.build_criterion()
    tg = targets_two_images()
    meta = {"pad_size": 12, "num_dn_group": 2}
    logits = torch.full((2, 12, 4), -12.0)
    boxes = torch.full((2, 12, 4), 0.5)
    for b, (qi, ti) in enumerate(dn_positive_indices(tg, meta)):
        logits[b, qi, tg[b]["labels"][ti]] = 12.0
        boxes[b, qi] = tg[b]["boxes"][ti]
    outputs = {"pred_logits": logits, "dn_outputs": {"pred_logits": logits, "pred_boxes": boxes}}
    perfect = crit.denoising_losses(outputs, tg, 4.0, meta, ["labels", "boxes"])
    assert perfect["loss_bbox_dn"].item() == pytest.approx(0.0, abs=1e-6)
    assert perfect["loss_giou_dn"].item() == pytest.approx(0.0, abs=1e-6)
    assert perfect["loss_ce_dn"].item() < 1e-6
    confident_negative = logits.clone()
    confident_negative[0, 3, 0] = 12.0  # block 1 = group 0's negatives
    worse = crit.denoising_losses({**outputs, "dn_outputs": {"pred_logits": confident_negative, "pred_boxes": boxes}},
                                  tg, 4.0, meta, ["labels", "boxes"])
    assert worse["loss_ce_dn"] > 0.1


def test_five_scale_option():
    model = tiny_model(num_feature_levels=5).eval()
    assert len(model.input_proj) == 5 and model.transformer.level_embed.shape == (5, 64)
    assert model.backbone.return_layers == (1, 2, 3, 4)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out["pred_logits"].shape == (1, 12, 4)


def test_registry_and_config_errors():
    model = create_model("dino", **TINY)
    assert isinstance(model, DINO) and model.score_activation == "sigmoid"
    with pytest.raises(ValueError, match="num_feature_levels"):
        tiny_model(num_feature_levels=7)
    with pytest.raises(ValueError, match="two_stage"):
        tiny_model(two_stage="no")
    with pytest.raises(ValueError, match="num_queries"):
        tiny_model(num_queries=200).eval()(torch.randn(1, 3, 64, 64))


def test_content_queries_from_encoder_tokens_without_tgt_embed():
    model = tiny_model(embed_init_tgt=False).eval()
    assert "transformer.tgt_embed.weight" not in model.state_dict()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out["pred_logits"].shape == (1, 12, 4) and torch.isfinite(out["pred_boxes"]).all()
