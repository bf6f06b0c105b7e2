"""The dfine family: building blocks, deploy fusion, the official losses and training through edgedet train."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgedet.models import create_model
from edgedet.nn.dfine_decoder import distance2bbox, weighting_function, weighting_function_constant
from edgedet.nn.dfine_encoder import VGGBlock
from realtime_detr_checks import check_fusion_is_exact, check_train_cli_uses_the_family_normalisation, train_a_few_steps

TINY = dict(num_classes=3, encoder_hidden_dim=32, encoder_nhead=2, encoder_dim_feedforward=64, hidden_dim=32,
            feat_channels=[32, 32], nheads=4, dim_feedforward=64, dec_layers=3, num_queries=20, num_points=[3, 2],
            num_denoising=20)


def tiny(**kw):
    return create_model("dfine", **{**TINY, **kw})


def test_weighting_function_is_the_official_sequence():
    up, rs = torch.tensor([0.5]), torch.tensor([4.0])
    w = weighting_function(32, up, rs)
    step = 3 ** (1 / 15)
    assert w.shape == (33,) and w[0] == -4 and w[32] == 4 and w[16] == 0
    np.testing.assert_allclose(w[17:32].numpy(), [step ** i - 1 for i in range(1, 16)], rtol=1e-6)
    np.testing.assert_allclose(w[1:16].numpy(), [1 - step ** i for i in range(15, 0, -1)], rtol=1e-6)
    assert (w[1:] > w[:-1]).all()
    # deploy: Python-float constants, within float32 rounding of the graph version
    assert float((weighting_function_constant(32, 0.5, 4.0) - w).abs().max()) < 2e-6


def test_distance2bbox_zero_distances_give_the_reference_box():
    ref = torch.tensor([[0.4, 0.5, 0.2, 0.3]])
    torch.testing.assert_close(distance2bbox(ref, torch.zeros(1, 4), torch.tensor([4.0])), ref)
    # one unit on the right edge = w / reg_scale
    out = distance2bbox(ref, torch.tensor([[0.0, 0.0, 1.0, 0.0]]), torch.tensor([4.0]))
    torch.testing.assert_close(out, torch.tensor([[0.425, 0.5, 0.25, 0.3]]))


def test_vggblock_and_model_deploy_fusion_are_exact():
    torch.manual_seed(0)
    block = VGGBlock(6, 6, act="silu")
    check_fusion_is_exact(block, "deploy", (2, 6, 7, 5))
    assert not hasattr(block, "conv1") and hasattr(block, "conv")

    model = tiny().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
    images = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        ref = model(images)
        out = model.deploy()(images)
    torch.testing.assert_close(out["pred_boxes"], ref["pred_boxes"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["pred_logits"], ref["pred_logits"], atol=1e-4, rtol=1e-4)


def test_training_step_with_denoising_and_all_loss_terms():
    torch.manual_seed(0)
    crit, out, losses = train_a_few_steps(tiny().train())
    assert out["dn_meta"]["num_dn_group"] == 10 and out["dn_outputs"][0]["pred_logits"].shape == (2, 40, 3)
    for key in ("loss_vfl", "loss_bbox", "loss_giou", "loss_fgl", "loss_ddf", "loss_fgl_0", "loss_ddf_0", "loss_vfl_pre",
                "loss_vfl_enc", "loss_bbox_enc", "loss_vfl_dn_0", "loss_fgl_dn_2", "loss_ddf_dn_1", "loss_giou_dn_pre"):
        assert key in losses and torch.isfinite(losses[key]), key
    assert float(losses["loss_ddf"].detach()) == 0.0 and float(losses["loss_ddf_0"].detach()) > 0  # the last layer is its own teacher
    assert crit.weight_dict["loss_fgl_dn_0"] == 0.15 and crit.weight_dict["loss_ddf_1"] == 1.5


def test_fgl_targets_interpolate_between_neighbouring_bins():
    from edgedet.losses.dfine_criterion import bbox2distance, translate_gt

    up, rs = torch.tensor([0.5]), torch.tensor([4.0])
    w = weighting_function(32, up, rs)
    gt = torch.tensor([w[20] * 0.25 + w[21] * 0.75, -10.0, 10.0])
    idx, w_right, w_left = translate_gt(gt, 32, rs, up)
    assert idx.tolist()[0] == 20 and abs(float(w_right[0]) - 0.75) < 1e-5 and abs(float(w_left[0]) - 0.25) < 1e-5
    assert (idx[1], w_left[1]) == (0.0, 1.0) and (float(idx[2]), float(w_right[2])) == (pytest.approx(31.9), 1.0)
    # a target equal to the reference box sits at distance 0 = bin 16 (W(16) = 0) on every edge
    ref = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    bins, w_right, _ = bbox2distance(ref, torch.tensor([[0.4, 0.4, 0.6, 0.6]]), 32, rs, up)
    torch.testing.assert_close(bins + w_right, torch.full((4,), 16.0), atol=1e-4, rtol=0)


def test_config_errors():
    from edgedet.config import ConfigError

    with pytest.raises(ConfigError, match="B0, B1"):
        tiny(backbone="resnet18")
    with pytest.raises(ConfigError, match="num_points"):
        tiny(num_points=[4, 4, 4])
    with pytest.raises(ValueError, match="cross_attn_method"):
        tiny(cross_attn_method="nearest")
    with pytest.raises(ValueError, match="divisible by 32, got 48x64"):
        tiny().eval()(torch.rand(1, 3, 48, 64))


def test_edgedet_train_cli_trains_dfine_with_its_own_normalisation(tmp_path):
    sets = [f"model.{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY.items() if k != "num_classes"]
    check_train_cli_uses_the_family_normalisation(tmp_path, "dfine", sets)
