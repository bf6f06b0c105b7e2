"""D-FINE: the official fixture (a checkpoint made by Peterande/D-FINE's own code) reproduced
output by output, in eval and in deploy mode; the config/update machinery and its errors."""
from __future__ import annotations


import pytest
import torch

from edgedet.checkpoints import OfficialCheckpointError, load_official
from edgedet.checkpoints.dfine_official import (
    DFINE_OFFICIAL_CONFIGS,
    official_to_model_fields,
    resolve_official_config,
)
from edgedet.engine.postprocess import to_detections
from reference_fixtures import REFERENCE, assert_matches_reference, check_recorded_intermediates, read_reference, \
    run_recording

FIXTURE = REFERENCE / "dfine"
pytestmark = pytest.mark.skipif(not (FIXTURE / "checkpoint.pth").exists(), reason="D-FINE reference fixture not available")
TOL = 1e-4


@pytest.fixture(scope="module")
def fixture():
    return read_reference(FIXTURE)


@pytest.fixture(scope="module")
def model(fixture):
    meta = fixture[0]
    return load_official(FIXTURE / "checkpoint.pth", config="dfine_hgnetv2_n_coco", updates=meta["config_updates"])


def _close(name, got, ref, tol=TOL):
    assert_matches_reference(name, got, ref, tol)


def _postprocess(out, orig_target_sizes):
    # the official orig_target_sizes are [[W, H]]; ours are (H, W)
    hw = torch.from_numpy(orig_target_sizes).flip(1)
    return to_detections(out, hw, "sigmoid", top_k=30)[0]


@pytest.mark.parametrize("img", ["img0", "img1"])
def test_eval_outputs_and_intermediates(model, fixture, img):
    _, inputs, outputs, inter = fixture
    out, record = run_recording(model, inputs[img])
    _close(f"{img}.pred_logits", out["pred_logits"], outputs[f"{img}.pred_logits"])
    _close(f"{img}.pred_boxes", out["pred_boxes"], outputs[f"{img}.pred_boxes"])
    assert check_recorded_intermediates(record, inter, img, TOL) == 30
    # official postprocessor: top-Q over all query x class sigmoid scores, xyxy pixels, COCO remap (+1 here)
    det = _postprocess(out, inputs[f"{img}_orig_target_sizes"])
    _close("labels", det.labels + 1, outputs[f"{img}.postprocessor.0.labels"])
    _close("boxes", det.boxes_xyxy, outputs[f"{img}.postprocessor.0.boxes"])
    _close("scores", det.scores, outputs[f"{img}.postprocessor.0.scores"])


def test_deploy_outputs(fixture):
    meta, inputs, outputs, _ = fixture
    m = load_official(FIXTURE / "checkpoint.pth", config="dfine_hgnetv2_n", updates=meta["config_updates"]).deploy()
    keys = m.state_dict().keys()
    assert not any(k.endswith((".conv1.conv.weight", ".cv1.norm.weight")) and k.startswith("encoder.") for k in keys)
    assert any(k.endswith("conv_bn_fused.weight") for k in keys)
    for img in ("img0", "img1"):
        with torch.no_grad():
            out = m(torch.from_numpy(inputs[img]))
        _close(f"{img}.deploy.pred_logits", out["pred_logits"], outputs[f"{img}.deploy.pred_logits"])
        _close(f"{img}.deploy.pred_boxes", out["pred_boxes"], outputs[f"{img}.deploy.pred_boxes"])
        det = _postprocess(out, inputs[f"{img}_orig_target_sizes"])
        _close("labels", det.labels[None], outputs[f"{img}.deploy.labels"])  # deploy graph: no remap
        _close("boxes", det.boxes_xyxy[None], outputs[f"{img}.deploy.boxes"])
        _close("scores", det.scores[None], outputs[f"{img}.deploy.scores"])


def test_checkpoint_facts_survive_loading(model):
    # int64 reg_scale read as the exact value; up / reg_scale shared with the inner decoder
    assert model.decoder.reg_scale.item() == 4.0 and model.decoder.up.item() == 0.5
    assert model.decoder.decoder.up is model.decoder.up and model.decoder.decoder.reg_scale is model.decoder.reg_scale
    nps = model.decoder.decoder.layers[0].cross_attn.num_points_scale
    assert nps.dtype == torch.float32 and nps.tolist() == [0.25] * 4 + [0.5] * 2


def test_resolved_config_matches_the_official_resolution(fixture):
    meta = fixture[0]
    cfg = resolve_official_config("dfine_hgnetv2_n_coco", meta["config_updates"])
    want = meta["resolved_module_kwargs"]
    for section in ("HGNetv2", "HybridEncoder", "DFINETransformer"):
        for key, value in want[section].items():
            if key in ("pretrained", "local_model_dir", "eval_spatial_size", "num_classes", "aux_loss"):
                continue
            assert cfg[section][key] == value, f"{section}.{key}: {cfg[section][key]!r} != {value!r}"
    assert cfg["num_classes"] == 5 and cfg["eval_spatial_size"] is None


def test_released_configs_build_with_their_published_sizes():
    from edgedet.models import create_model_from_config
    from edgedet.models.dfine import DFINEConfig
    from edgedet.config import from_dict

    # parameter counts published in D-FINE's README (millions, rounded)
    expect_m = {"n": 4, "s": 10, "m": 19, "l": 31, "x": 62}
    for size, millions in expect_m.items():
        fields = official_to_model_fields(DFINE_OFFICIAL_CONFIGS[f"dfine_hgnetv2_{size}_coco"])
        with torch.device("meta"):
            m = create_model_from_config(from_dict(DFINEConfig, fields, "model"))
        n = sum(p.numel() for p in m.parameters()) / 1e6
        assert abs(n - millions) / millions < 0.06, f"D-FINE-{size.upper()}: {n:.2f} M parameters, published {millions} M"
    deim = DFINE_OFFICIAL_CONFIGS["deim_hgnetv2_s_coco"]["DFINETransformer"]
    assert deim["activation"] == "silu" and deim["mlp_act"] == "silu"


def test_update_parsing_and_errors(tmp_path, fixture):
    cfg = resolve_official_config("deim_hgnetv2_n", ["DFINETransformer.num_points=[4,2]", "eval_spatial_size=~", "DEIM.backbone=HGNetv2"])
    assert cfg["DFINETransformer"]["num_points"] == [4, 2] and cfg["eval_spatial_size"] is None
    with pytest.raises(OfficialCheckpointError, match="KEY=VALUE"):
        resolve_official_config("dfine_hgnetv2_n", ["HybridEncoder.hidden_dim"])
    with pytest.raises(OfficialCheckpointError, match="unknown D-FINE update key 'Decoder.hidden_dim'"):
        resolve_official_config("dfine_hgnetv2_n", ["Decoder.hidden_dim=64"])
    with pytest.raises(OfficialCheckpointError, match="unknown D-FINE/DEIM config"):
        resolve_official_config("dfine_hgnetv2_q_coco")
    # the released N config does not fit the small fixture: one line naming the mismatches
    with pytest.raises(OfficialCheckpointError, match=r"num_classes=80 \(weights: 5\).*num_points=\[6, 6\] \(weights: \[4, 2\]\)"):
        load_official(FIXTURE / "checkpoint.pth", config="dfine_hgnetv2_n_coco")
    with pytest.raises(OfficialCheckpointError, match="carries no config"):
        load_official(FIXTURE / "checkpoint.pth")


def test_convert_checkpoint_cli_with_config_and_updates(tmp_path, fixture, capsys):
    from edgedet.cli import main as cli_main
    from edgedet.engine.checkpoint import load_checkpoint, load_model

    meta, inputs, outputs, _ = fixture
    argv = ["convert-checkpoint", str(FIXTURE / "checkpoint.pth"), "--config", "dfine_hgnetv2_n_coco", "-o", str(tmp_path / "d.pth")]
    for u in meta["config_updates"]:
        argv += ["--update", u]
    assert cli_main(argv) == 0
    model = load_model(tmp_path / "d.pth").eval()
    assert model.config.name == "dfine" and model.config.num_points == [4, 2]
    assert load_checkpoint(tmp_path / "d.pth")["config"]["data"]["std"] == [1.0, 1.0, 1.0]
    with torch.no_grad():
        out = model(torch.from_numpy(inputs["img1"]))
    _close("img1.pred_boxes", out["pred_boxes"], outputs["img1.pred_boxes"])
    capsys.readouterr()
    assert cli_main(argv[:-2] + ["--update", "num_classes=7"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "num_classes=7 (weights: 5)" in err
