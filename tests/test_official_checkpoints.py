"""Official checkpoints: safe loading, family detection, config from args, parity with the reference.

The fixtures in ../shared/fixtures/reference/<family>/ were produced by the official repositories;
loading `checkpoint.pth` must reproduce `outputs.npz` on `inputs.npz` (≤ 1e-4).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pytest
import torch
from torch import nn

from edgedet.checkpoints import (
    OfficialCheckpointError,
    UnsafeCheckpointError,
    detect_family,
    load_official,
    load_official_state_dict,
    read_official_checkpoint,
    safe_torch_load,
)
from edgedet.checkpoints.official_state_dict import group_keys
from edgedet.cli import main as cli_main
from edgedet.engine.checkpoint import load_checkpoint, load_model

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "reference"
FAMILIES = ["detr", "deformable_detr", "dab_detr", "dino"]
ATOL = 1e-4


def fixture_dir(family: str) -> Path:
    d = REFERENCE / family
    if not (d / "checkpoint.pth").is_file():
        pytest.skip(f"{d} not available")
    return d


def flatten(obj, prefix: str, out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Output dict -> {'img0.aux_outputs.0.pred_logits': tensor, ...} (the outputs.npz naming)."""
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            flatten(v, f"{prefix}.{k}", out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            flatten(v, f"{prefix}.{i}", out)
    return out


def run(model: nn.Module, d: Path, images=("img0", "img1")) -> Dict[str, torch.Tensor]:
    inputs = np.load(d / "inputs.npz")
    flat: Dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for img in images:
            flatten(model(torch.from_numpy(inputs[img]), torch.from_numpy(inputs[f"{img}_mask"])), img, flat)
    return flat


def assert_matches_reference(flat: Dict[str, torch.Tensor], d: Path, images=("img0", "img1")) -> None:
    ref = np.load(d / "outputs.npz")
    keys = [k for k in ref.files if k.split(".")[0] in images]
    assert {f"{i}.aux_outputs.0.pred_boxes" for i in images} <= set(keys)
    for k in keys:
        assert k in flat, f"model output lacks {k}"
        got = flat[k].numpy()
        assert got.shape == ref[k].shape, k
        diff = float(np.abs(got - ref[k]).max())
        assert diff <= ATOL, f"{k}: max abs diff {diff:.2e}"


# ---------------------------------------------------------------- parity with the reference repositories


@pytest.mark.parametrize("family", FAMILIES)
def test_official_checkpoint_reproduces_reference_outputs(family):
    d = fixture_dir(family)
    model = load_official(d / "checkpoint.pth")  # family auto-detected
    assert model.config.name == family
    assert not model.training
    assert_matches_reference(run(model, d), d)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_detected_from_keys(family):
    state, args = read_official_checkpoint(fixture_dir(family) / "checkpoint.pth")
    assert args is not None and all(v.dtype == torch.float16 for v in state.values())
    assert detect_family(state, args) == family
    assert detect_family(state) == family  # keys alone suffice


def test_explicit_family_that_disagrees_with_the_keys_is_refused():
    d = fixture_dir("dab_detr")
    with pytest.raises(OfficialCheckpointError, match="'dab_detr' checkpoint.*not 'detr'"):
        load_official(d / "checkpoint.pth", family="detr")
    with pytest.raises(OfficialCheckpointError, match="Valid names: dab_detr, deformable_detr, detr, dfine, dino"):
        load_official(d / "checkpoint.pth", family="yolo")


# ---------------------------------------------------------------- args: Namespace, absent, inconsistent


def test_namespace_args_training_checkpoint_loads(tmp_path):
    d = fixture_dir("dab_detr")
    ckpt = torch.load(d / "checkpoint.pth", map_location="cpu", weights_only=True)
    path = tmp_path / "checkpoint0049.pth"
    # The layout the official main.py writes: args pickled as an argparse.Namespace, plus training state.
    torch.save({"model": ckpt["model"], "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {"last_epoch": 49},
                "epoch": 49, "args": argparse.Namespace(**ckpt["args"])}, path)
    model = load_official(path)
    assert model.config.nheads == 4 and model.config.num_classes == 91
    assert_matches_reference(run(model, d, ("img1",)), d, ("img1",))


def test_checkpoint_without_args_is_rebuilt_from_shapes(tmp_path, caplog):
    d = fixture_dir("dab_detr")
    ckpt = torch.load(d / "checkpoint.pth", map_location="cpu", weights_only=True)
    path = tmp_path / "bare.pth"
    torch.save(ckpt["model"], path)
    model = load_official(path, overrides={"nheads": 4})  # heads are invisible in shapes
    cfg = model.config
    assert (cfg.backbone, cfg.hidden_dim, cfg.num_queries, cfg.enc_layers, cfg.dec_layers) == ("resnet18", 256, 30, 2, 2)
    assert (cfg.dim_feedforward, cfg.num_classes, cfg.activation) == (128, 91, "prelu")
    assert_matches_reference(run(model, d, ("img1",)), d, ("img1",))


def test_args_that_contradict_the_weights_are_reported(tmp_path):
    d = fixture_dir("detr")
    ckpt = torch.load(d / "checkpoint.pth", map_location="cpu", weights_only=True)
    path = tmp_path / "wrong_args.pth"
    torch.save({"model": ckpt["model"], "args": {**ckpt["args"], "num_queries": 31}}, path)
    with pytest.raises(OfficialCheckpointError, match=r"num_queries=31 \(weights: 30\)"):
        load_official(path)


# ---------------------------------------------------------------- safety


class _Payload:
    """Stands for an arbitrary pickled object; unpickling it would call __setstate__."""

    executed = []

    def __setstate__(self, state):
        _Payload.executed.append(state)


def test_checkpoint_needing_a_foreign_global_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    payload = _Payload()
    payload.x = 1
    torch.save({"model": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=1e-4), "extra": payload}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"_Payload.*does not execute arbitrary pickles"):
        load_official(path)
    with pytest.raises(UnsafeCheckpointError):
        safe_torch_load(path)
    assert _Payload.executed == []


def test_missing_and_unreadable_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_official(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
        safe_torch_load(junk)


# ---------------------------------------------------------------- key matching


def test_missing_and_extra_keys_are_listed_by_module(tmp_path):
    d = fixture_dir("dab_detr")
    ckpt = torch.load(d / "checkpoint.pth", map_location="cpu", weights_only=True)
    state = dict(ckpt["model"])
    for layer in (0, 1):
        for leaf in ("weight", "bias"):
            del state[f"transformer.decoder.layers.{layer}.ca_kpos_proj.{leaf}"]
    state["transformer.decoder.extra_head.weight"] = torch.zeros(3, 3)
    path = tmp_path / "edited.pth"
    torch.save({"model": state, "args": ckpt["args"]}, path)
    with pytest.raises(OfficialCheckpointError) as err:
        load_official(path)
    msg = str(err.value)
    assert "4 model keys missing from the checkpoint: transformer.decoder.layers.#.ca_kpos_proj [# = 0 | 1]: weight, bias" in msg
    assert "1 checkpoint keys the model does not have: transformer.decoder.extra_head: weight" in msg


def test_group_keys_collapses_layer_indices():
    keys = ["a.0.x.weight", "a.0.x.bias", "a.2.x.weight", "b.weight", "top"]
    assert group_keys(keys) == "a.#.x [# = 0 | 2]: weight, bias; b: weight; (top level): top"


class _Tied(nn.Module):
    def __init__(self, tie: Optional[bool]):
        super().__init__()
        self.head = nn.Linear(2, 2)
        if tie is not None:  # None: the model has no second name at all
            self.copy = self.head if tie else nn.Linear(2, 2)


def test_tied_tensors_load_whichever_side_holds_the_alias():
    head = nn.Linear(2, 2)
    w, b = head.weight.detach(), head.bias.detach()
    # The checkpoint holds the alias, the model ties the modules too.
    model = _Tied(tie=True)
    load_official_state_dict(model, {"head.weight": w, "head.bias": b, "copy.weight": w, "copy.bias": b}, "test")
    assert torch.equal(model.copy.weight, w)
    # The checkpoint holds an alias the model lacks: accepted, since it is the same tensor.
    model = _Tied(tie=None)
    load_official_state_dict(model, {"head.weight": w, "head.bias": b, "copy.weight": w, "copy.bias": b}, "test")
    assert torch.equal(model.head.weight, w)
    # ... but a distinct tensor under an unknown name is reported.
    with pytest.raises(OfficialCheckpointError, match="checkpoint keys the model does not have: copy: weight"):
        load_official_state_dict(_Tied(tie=None), {"head.weight": w, "head.bias": b, "copy.weight": w.clone()}, "test")
    # The model ties, the checkpoint has one name only: the twin is filled in.
    model = _Tied(tie=True)
    load_official_state_dict(model, {"head.weight": w, "head.bias": b}, "test")
    assert torch.equal(model.copy.bias, b)
    # Untied model, but the checkpoint's copy is a different tensor: nothing is invented.
    with pytest.raises(OfficialCheckpointError, match="copy: weight, bias"):
        load_official_state_dict(_Tied(tie=False), {"head.weight": w, "head.bias": b}, "test")


# ---------------------------------------------------------------- convert-checkpoint


def test_convert_checkpoint_round_trip(tmp_path):
    d = fixture_dir("dab_detr")
    out = tmp_path / "dab_edgedet.pth"
    assert cli_main(["convert-checkpoint", str(d / "checkpoint.pth"), "--from", "dab_detr", "-o", str(out)]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt["format"] == "edgedet-checkpoint-v1" and ckpt["epoch"] == 0
    assert ckpt["config"]["model"]["name"] == "dab_detr" and ckpt["config"]["model"]["nheads"] == 4
    converted = run(load_model(out), d)
    direct = run(load_official(d / "checkpoint.pth"), d)
    assert converted.keys() == direct.keys()
    for k in direct:
        assert torch.equal(converted[k], direct[k]), k
    assert_matches_reference(converted, d)


def test_convert_checkpoint_cli_reports_a_bad_family(tmp_path, capsys):
    d = fixture_dir("dino")
    code = cli_main(["convert-checkpoint", str(d / "checkpoint.pth"), "--from", "deformable_detr", "-o", str(tmp_path / "x.pth")])
    assert code == 2
    assert "this is a 'dino' checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


@pytest.mark.parametrize("family", ["detr", "deformable_detr", "dino"])
def test_converted_checkpoint_of_every_family_loads_with_identical_weights(tmp_path, family):
    d = fixture_dir(family)
    out = tmp_path / f"{family}.pth"
    assert cli_main(["convert-checkpoint", str(d / "checkpoint.pth"), "-o", str(out)]) == 0
    converted = load_model(out).state_dict()
    direct = load_official(d / "checkpoint.pth").state_dict()
    assert converted.keys() == direct.keys()
    assert all(torch.equal(converted[k], direct[k]) for k in direct)
