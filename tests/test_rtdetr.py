"""RT-DETRv2 (`rtdetr`): official checkpoints reproduced exactly, release configs, training, pieces.

The fixtures ../shared/fixtures/reference/rtdetrv2{,_discrete}/ were made by lyuwenyu/RT-DETR's
own code (README there): loading `checkpoint.pth` with the recorded config updates must
reproduce every output, postprocessor output and intermediate ≤ 1e-4, in eval and deploy mode.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgedet import create_model
from edgedet.checkpoints import OfficialCheckpointError, detect_family, load_official, read_official_checkpoint
from edgedet.checkpoints.rtdetr_official import RTDETR_CONFIGS, fields_from_weights, official_to_fields, resolve_config
from edgedet.cli import main as cli_main
from edgedet.models.rtdetr import official_postprocess
from edgedet.nn.hybrid_encoder import RepVggBlock, sincos_position_embedding_2d
from edgedet.nn.rtdetr_decoder import generate_anchors
from realtime_detr_checks import check_fusion_is_exact, check_train_cli_uses_the_family_normalisation, train_a_few_steps
from reference_fixtures import REFERENCE

ATOL = 1e-4


def fixture(name: str):
    d = REFERENCE / name
    if not (d / "checkpoint.pth").is_file():
        pytest.skip(f"{d} not available")
    meta = json.loads((d / "meta.json").read_text())
    return d, meta


def tiny(**kw):
    cfg = dict(num_classes=3, encoder_hidden_dim=32, hidden_dim=32, nheads=4, encoder_nhead=2, encoder_dim_feedforward=64,
               dim_feedforward=64, dec_layers=2, num_queries=20, num_points=[3, 2, 1], num_denoising=20)
    cfg.update(kw)
    return create_model("rtdetr", **cfg)


@pytest.mark.parametrize("name", ["rtdetrv2", "rtdetrv2_discrete"])
def test_official_fixture_outputs_in_eval_and_deploy_mode(name):
    d, meta = fixture(name)
    model = load_official(d / "checkpoint.pth", config="rtdetrv2_r18vd", updates=meta["config_updates"])
    assert model.config.cross_attn_method == ("discrete" if "discrete" in name else "default")
    inputs, outputs, inter = (np.load(d / f) for f in ("inputs.npz", "outputs.npz", "intermediates.npz"))
    seen = {}
    hooks = [model.backbone.register_forward_hook(lambda m, i, o: seen.__setitem__("backbone", o)),
             model.encoder.register_forward_hook(lambda m, i, o: seen.__setitem__("encoder", o)),
             model.decoder.register_forward_hook(lambda m, i, o: seen.__setitem__("decoder", o))]
    for deploy in (False, True):
        if deploy:
            model.deploy()
            assert all(hasattr(m, "conv") for m in model.modules() if isinstance(m, RepVggBlock))
        for img in ("img0", "img1"):
            with torch.no_grad():
                out = model(torch.from_numpy(inputs[img]))
            pre = f"{img}.deploy." if deploy else f"{img}."
            for key in ("pred_logits", "pred_boxes"):
                np.testing.assert_allclose(out[key].numpy(), outputs[pre + key], atol=ATOL, rtol=0, err_msg=pre + key)
            sizes = torch.from_numpy(inputs[f"{img}_orig_target_sizes"])
            labels, boxes, scores = official_postprocess(out, sizes, 30, remap_mscoco_category=not deploy)
            post = f"{img}.deploy." if deploy else f"{img}.postprocessor.0."
            np.testing.assert_array_equal(labels.reshape(outputs[post + "labels"].shape).numpy(), outputs[post + "labels"])
            np.testing.assert_allclose(boxes.reshape(outputs[post + "boxes"].shape).numpy(), outputs[post + "boxes"],
                                       atol=ATOL, rtol=0)
            np.testing.assert_allclose(scores.reshape(outputs[post + "scores"].shape).numpy(), outputs[post + "scores"],
                                       atol=ATOL, rtol=0)
            if not deploy:
                for i in range(3):
                    np.testing.assert_allclose(seen["backbone"][i].numpy(), inter[f"{img}.backbone.{i}"], atol=ATOL, rtol=0)
                    np.testing.assert_allclose(seen["encoder"][i].numpy(), inter[f"{img}.encoder.{i}"], atol=ATOL, rtol=0)
                np.testing.assert_allclose(seen["decoder"]["enc_logits"].numpy(), inter[f"{img}.enc_score_logits"],
                                           atol=ATOL, rtol=0)
                np.testing.assert_array_equal(seen["decoder"]["enc_topk_index"].numpy(), inter[f"{img}.enc_topk_indices"])
    for h in hooks:
        h.remove()


def test_checkpoint_reading_prefers_ema_and_detects_the_family():
    d, _ = fixture("rtdetrv2")
    state, args = read_official_checkpoint(d / "checkpoint.pth")
    assert args is None and len(state) == 536
    assert detect_family(state) == "rtdetr"
    seen = fields_from_weights(state)
    assert seen["backbone"] == "presnet18" and seen["num_points"] == [4, 3, 2] and seen["nheads"] == 8
    assert seen["dec_layers"] == 3 and seen["num_classes"] == 5 and seen["expansion"] == 0.5


def test_config_errors_are_one_line_and_name_the_mismatch():
    d, meta = fixture("rtdetrv2")
    path = d / "checkpoint.pth"
    with pytest.raises(OfficialCheckpointError, match="carries no config.*released configs whose shapes fit"):
        load_official(path)
    updates = [u for u in meta["config_updates"] if not u.startswith(("num_classes", "RTDETRTransformerv2.num_points"))]
    with pytest.raises(OfficialCheckpointError) as err:
        load_official(path, config="rtdetrv2_r18vd", updates=updates)
    msg = str(err.value)
    assert "\n" not in msg and "num_classes=80 (weights: 5)" in msg and "num_points=[4, 4, 4] (weights: [4, 3, 2])" in msg
    with pytest.raises(OfficialCheckpointError, match="eval_spatial_size"):
        load_official(path, config="rtdetrv2_r18vd", updates=[u for u in meta["config_updates"] if "eval_spatial" not in u])
    with pytest.raises(OfficialCheckpointError, match="unknown RT-DETRv2 update key 'HybridEncoder.hiden_dim'"):
        resolve_config("rtdetrv2_r18vd", ["HybridEncoder.hiden_dim=64"])
    with pytest.raises(OfficialCheckpointError, match="unknown RT-DETRv2 config 'rtdetrv2_r19vd'. Valid: rtdetrv2_r18vd"):
        resolve_config("rtdetrv2_r19vd")


def test_released_configs_build_the_published_architectures():
    r50 = official_to_fields(resolve_config("rtdetrv2_r50vd"))
    assert (r50["backbone"], r50["dec_layers"], r50["expansion"], r50["backbone_frozen_bn"]) == ("presnet50", 6, 1.0, True)
    assert official_to_fields(resolve_config("rtdetrv2_r50vd_m"))["eval_idx"] == 2
    assert official_to_fields(resolve_config("rtdetrv2_r101vd"))["encoder_hidden_dim"] == 384
    assert official_to_fields(resolve_config("rtdetrv2_r34vd_dsp"))["cross_attn_method"] == "discrete"
    assert official_to_fields(resolve_config("rtdetrv2_r18vd_sp1"))["num_points"] == [1, 1, 1]
    assert "rtdetrv2_r18vd_dsp" in RTDETR_CONFIGS
    # the released r18 at 640 has 11,8k anchors in its state_dict; our build has them too
    fields = official_to_fields(resolve_config("rtdetrv2_r18vd", ["num_classes=5"]))
    from edgedet.config import from_dict
    from edgedet.models.rtdetr import RTDETR, RTDETRConfig

    model = RTDETR(from_dict(RTDETRConfig, fields))
    sd = model.state_dict()
    assert sd["decoder.anchors"].shape == (1, 80 * 80 + 40 * 40 + 20 * 20, 4) and sd["decoder.valid_mask"].dtype == torch.bool
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(20.0, abs=0.5)  # RT-DETRv2-S: 20M


def test_convert_checkpoint_cli_with_config_and_updates(tmp_path, capsys):
    d, meta = fixture("rtdetrv2")
    argv = ["convert-checkpoint", str(d / "checkpoint.pth"), "--config", "rtdetrv2_r18vd", "-o", str(tmp_path / "r.pth")]
    for u in meta["config_updates"]:
        argv += ["--update", u]
    assert cli_main(argv) == 0
    from edgedet.engine.checkpoint import load_checkpoint, load_model

    model = load_model(tmp_path / "r.pth")
    assert model.config.num_points == [4, 3, 2] and model.config.num_queries == 30
    data = load_checkpoint(tmp_path / "r.pth")["config"]["data"]
    assert data["mean"] == [0.0, 0.0, 0.0] and data["std"] == [1.0, 1.0, 1.0]
    capsys.readouterr()
    assert cli_main(argv[:-2] + ["--update", "num_classes=7"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "num_classes=7 (weights: 5)" in err


def test_repvgg_fusion_is_exact():
    torch.manual_seed(0)
    check_fusion_is_exact(RepVggBlock(8, 8, act="silu"), "convert_to_deploy", (2, 8, 9, 7))


def test_position_embedding_and_anchors_follow_the_official_layout():
    pos = sincos_position_embedding_2d(3, 2, 8, 10000.0)[0]  # w = 3, h = 2
    # token k: "w" features from k // h, "h" features from k % h (meshgrid 'ij' of (w, h))
    k = 3
    assert torch.allclose(pos[k, 0], torch.tensor(float(k // 2)).sin()) and torch.allclose(pos[k, 4], torch.tensor(float(k % 2)).sin())
    anchors, valid = generate_anchors([(2, 4)], eps=0.01)
    first = torch.sigmoid(anchors[0, 0])
    torch.testing.assert_close(first, torch.tensor([0.125, 0.25, 0.05, 0.05]))
    assert valid.all()
    anchors, valid = generate_anchors([(1, 1)], grid_size=0.995)
    assert not valid.any() and torch.isinf(anchors).all()


def test_training_step_with_denoising_and_all_loss_terms():
    torch.manual_seed(0)
    crit, out, losses = train_a_few_steps(tiny().train())
    assert out["dn_meta"]["num_dn_group"] == 10 and out["dn_outputs"]["pred_logits"].shape == (2, 40, 3)
    for key in ("loss_vfl", "loss_bbox", "loss_giou", "loss_vfl_0", "loss_vfl_enc", "loss_vfl_dn", "loss_giou_dn_0"):
        assert key in losses and torch.isfinite(losses[key])
    assert crit.weight_dict["loss_vfl_dn_0"] == 1.0 and crit.weight_dict["loss_bbox_enc"] == 5.0


def test_training_variants_agnostic_selection_learned_content_fixed_anchors():
    torch.manual_seed(0)
    model = tiny(query_select_method="agnostic", learn_query_content=True, eval_spatial_size=[64, 64]).train()
    assert model.decoder.enc_score_head.out_features == 1 and model.decoder.anchors.shape == (1, 64 + 16 + 4, 4)
    crit = model.build_criterion()
    targets = [{"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]])}]
    losses = crit(model(torch.rand(1, 3, 64, 64), None, targets), targets)
    crit.total_loss(losses).backward()
    assert torch.isfinite(losses["loss_vfl_enc"]) and model.decoder.tgt_embed.weight.grad is not None
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64))["pred_boxes"].shape == (1, 20, 4)  # cached anchors
        assert model(torch.rand(1, 3, 96, 64))["pred_boxes"].shape == (1, 20, 4)  # another size: anchors rebuilt


def test_varifocal_loss_matches_its_definition():
    from edgedet.losses.varifocal import varifocal_loss

    logits = torch.tensor([[[2.0, -1.0], [0.5, 0.0]]])
    positive = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    score = positive * 0.6
    p = logits.sigmoid()
    weight = 0.75 * p**2 * (1 - positive) + score
    bce = -(score * p.log() + (1 - score) * (1 - p).log())
    torch.testing.assert_close(varifocal_loss(logits, score, positive, 2.0), (weight * bce).sum() / 2.0)


def test_official_postprocess_is_topk_over_query_class_pairs():
    logits = torch.tensor([[[0.0, 3.0], [2.0, -5.0], [1.0, 1.5]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]])
    labels, xyxy, scores = official_postprocess({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[200, 100]]), 3)
    assert labels.tolist() == [[1, 0, 1]]
    torch.testing.assert_close(scores, torch.tensor([[3.0, 2.0, 1.5]]).sigmoid())
    torch.testing.assert_close(xyxy[0, 1], torch.tensor([0.0, 0.0, 100.0, 50.0]))  # width first
    coco, _, _ = official_postprocess({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[200, 100]]), 3, True)
    assert coco.tolist() == [[2, 1, 2]]


def test_config_errors():
    from edgedet.config import ConfigError

    with pytest.raises(ConfigError, match="presnet18, presnet34"):
        create_model("rtdetr", backbone="resnet19")
    with pytest.raises(ConfigError, match="num_points"):
        create_model("rtdetr", num_points=[4, 4])
    with pytest.raises(ConfigError, match="cross_attn_method"):
        create_model("rtdetr", cross_attn_method="nearest")


def test_edgedet_train_cli_trains_rtdetr_with_its_own_normalisation(tmp_path):
    sets = ["model.encoder_hidden_dim=32", "model.hidden_dim=32", "model.nheads=4", "model.encoder_nhead=2",
            "model.encoder_dim_feedforward=64", "model.dim_feedforward=64", "model.dec_layers=2", "model.num_queries=10",
            "model.num_points=[2,2,1]", "model.num_denoising=10", "model.backbone_frozen_bn=false"]
    check_train_cli_uses_the_family_normalisation(tmp_path, "rtdetr", sets)


def test_box_head_on_selected_tokens_matches_the_official_order():
    """Ours runs the encoder box head on the top-k tokens only; the official code runs it on every
    token and then selects: the outputs must be identical."""
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.rand(1, 3, 128, 160)
    with torch.no_grad():
        ours = model(x)
        model.decoder.boxes_for_selected_only = False
        official = model(x)
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(ours[key], official[key], rtol=0, atol=0)
