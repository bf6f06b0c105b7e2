"""`edgedet train --weights W --config NAME --update KEY=VALUE` from the shared RT-DETRv2 / D-FINE fixtures,
the missing-config answer (released configs that fit, the command) and one-line errors for bad input."""
from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import pytest
import torch

from edgedet.checkpoints import OfficialCheckpointError, load_official
from edgedet.cli import main as cli_main
from edgedet.data.coco_names import coco_contiguous_names, coco_official_names, official_class_names
from edgedet.engine import checkpoint as ckpt_io
from edgedet.engine.finetune import load_pretrained, read_weights, resolve_config
from edgedet.models import create_model_from_config

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "reference"
RELEASED = {"rtdetrv2": "rtdetrv2_r18vd", "dfine": "dfine_hgnetv2_n_coco"}
FOCAL_PRIOR = -math.log((1 - 0.01) / 0.01)
LIVE_BN = ("running_mean", "running_var", "num_batches_tracked")  # move in a training step even at lr 0


def _fixture(folder: str):
    path = REFERENCE / folder / "checkpoint.pth"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return path, json.loads((REFERENCE / folder / "meta.json").read_text())["config_updates"]


def _update_flags(updates):
    return [a for u in updates for a in ("--update", u)]


def _one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("folder", ["rtdetrv2", "dfine"])
def test_cli_finetune_from_released_weights_with_config_and_updates(folder, tmp_path):
    path, updates = _fixture(folder)
    config = RELEASED[folder]
    argv = ["train", "--weights", str(path), "--config", config, *_update_flags(updates), "--data", "synthetic",
            "--epochs", "1", "--batch-size", "2", "--output", str(tmp_path / "run"), "--no-progress",
            "--set", "train.lr=0", "--set", "train.max_iters_per_epoch=1", "--set", "train.eval_every=0",
            "--set", "data.synthetic_train_images=2", "--set", "data.synthetic_val_images=1"]
    assert cli_main(argv) == 0
    ckpt = ckpt_io.load_checkpoint(tmp_path / "run" / "last.pth")
    state, cfg = ckpt["model"], ckpt_io.checkpoint_config(ckpt).model
    assert cfg.weights_config == config and cfg.weights_updates == updates and cfg.num_classes == 3

    official = load_official(path, config=config, updates=updates).state_dict()  # the weights as loaded (float32)
    report = json.loads((tmp_path / "run" / "load_report.json").read_text())
    class_keys = create_model_from_config(cfg).class_dependent_keys()
    assert sorted(report["reinitialised"]) == sorted(class_keys) and len(class_keys) == 2 + 2 * 3 + 1
    assert report["counts"]["missing"] == 0 and report["counts"]["unused"] == 0 and report["counts"]["kept_rows"] == 0
    assert report["counts"]["loaded"] + report["counts"]["reinitialised"] == len(state) == len(official)
    for k in report["loaded"]:  # lr 0: bit-equal to the official tensors after a training step
        if not k.endswith(LIVE_BN):
            assert torch.equal(state[k], official[k]), k
    for k in class_keys:  # the dataset's 3 classes (+1 row for the denoising label book), the family's init
        assert state[k].shape[0] == 3 + k.startswith("decoder.denoising_class_embed"), k
        assert official[k].shape[0] != state[k].shape[0], k
        if k.endswith("score_head.bias") or ".dec_score_head." in k and k.endswith("bias"):
            assert torch.allclose(state[k], torch.full_like(state[k], FOCAL_PRIOR)), k


@pytest.mark.parametrize("folder", ["rtdetrv2", "dfine"])
def test_missing_config_lists_the_released_configs_that_fit_and_the_command(folder, capsys, tmp_path):
    path, updates = _fixture(folder)
    err = _one_line_error(capsys, ["train", "--weights", str(path), "--data", "synthetic"])
    assert "carries no config" in err and "--config NAME" in err and "released configs whose shapes fit" in err
    assert f"Run: edgedet train --weights {path} --config {RELEASED[folder]} --update" in err
    assert "-u " not in err and "config='" not in err
    # the suggested command loads: its updates make the released config fit every tensor
    command = err.split("Run: ", 1)[1].split(" (the weights cannot show", 1)[0]
    words = shlex.split(command)
    suggested = [words[i + 1] for i, w in enumerate(words) if w == "--update"]
    assert "num_classes=5" in suggested and any("num_points=" in u for u in suggested)
    load_official(path, config=words[words.index("--config") + 1], updates=suggested)
    # convert-checkpoint and export give their own command
    err = _one_line_error(capsys, ["convert-checkpoint", str(path), "-o", str(tmp_path / "o.pth")])
    assert f"Run: edgedet convert-checkpoint {path} --config {RELEASED[folder]} --update" in err
    assert not (tmp_path / "o.pth").exists()


def test_bad_input_is_a_one_line_error_naming_both_sides(capsys, tmp_path):
    rt, rt_updates = _fixture("rtdetrv2")
    dfine, _ = _fixture("dfine")
    dino = REFERENCE / "dino" / "checkpoint.pth"
    err = _one_line_error(capsys, ["train", "--weights", str(dfine), "--config", "rtdetrv2_r18vd"])
    assert "is a D-FINE/DEIM checkpoint" in err and "rtdetrv2_r18vd is an RT-DETRv2 config" in err
    assert "dfine_hgnetv2_n_coco --update" in err  # and what would fit
    err = _one_line_error(capsys, ["convert-checkpoint", str(rt), "--config", "dfine_hgnetv2_n_coco", "-o", str(tmp_path / "x.pth")])
    assert "is an RT-DETRv2 checkpoint" in err and "dfine_hgnetv2_n_coco is a D-FINE/DEIM config" in err
    if dino.is_file():
        err = _one_line_error(capsys, ["train", "--weights", str(dino), "--config", "dfine_hgnetv2_n_coco"])
        assert "'dino' checkpoint" in err and "carries its own config" in err and "D-FINE/DEIM config" in err
    bad = [u if not u.startswith("RTDETRTransformerv2.num_points") else "RTDETRTransformerv2.num_points=[4,3" for u in rt_updates]
    err = _one_line_error(capsys, ["train", "--weights", str(rt), "--config", "rtdetrv2_r18vd", *_update_flags(bad)])
    assert "--update RTDETRTransformerv2.num_points=[4,3" in err and "not valid YAML" in err and "ParserError" not in err
    err = _one_line_error(capsys, ["train", "--weights", str(rt), "--config", "rtdetrv2_r18vd", "--update", "num_classes=7"])
    assert "num_classes=7 (weights: 5)" in err
    err = _one_line_error(capsys, ["train", "--config", "dfine_hgnetv2_q_coco"])
    assert "not a released D-FINE/DEIM config" in err and "dfine_hgnetv2_n_coco" in err
    with pytest.raises(OfficialCheckpointError, match=r"list of KEY=VALUE strings.*not the string 'num_classes=5'"):
        load_official(rt, config="rtdetrv2_r18vd", updates="num_classes=5")
    truncated = tmp_path / "rtdetrv2_r18vd.pth"
    truncated.write_bytes(rt.read_bytes()[: rt.stat().st_size // 2])
    err = _one_line_error(capsys, ["train", "--weights", str(truncated), "--config", "rtdetrv2_r18vd"])
    assert f"{truncated} is truncated" in err and f"{truncated.stat().st_size:,} bytes" in err


def test_keep_classes_picks_rows_of_released_weights():
    path, updates = _fixture("rtdetrv2")
    weights = read_weights(path, "rtdetrv2_r18vd", updates)
    assert weights.kind == "official" and weights.config.name == "rtdetr" and weights.class_names == []  # 5 classes: not COCO
    from edgedet.config import ExperimentConfig
    from edgedet.models import default_config

    cfg = resolve_config(ExperimentConfig(model=default_config("rtdetr")), weights).model
    cfg.num_classes, cfg.class_names = 2, ["b", "a"]
    model = create_model_from_config(cfg)
    report = load_pretrained(model, weights, [4, 0])
    assert sorted(report.kept_rows) == sorted(model.class_dependent_keys()) and not report.reinitialised
    assert torch.equal(model.decoder.enc_score_head.weight, weights.state["decoder.enc_score_head.weight"][[4, 0]])
    label_book = weights.state["decoder.denoising_class_embed.weight"]  # its spare last row comes along
    assert torch.equal(model.decoder.denoising_class_embed.weight, label_book[[4, 0, 5]])


def test_coco_names_in_each_familys_official_order():
    contiguous = coco_contiguous_names()
    assert len(contiguous) == 80 and contiguous[0] == "person" and contiguous[79] == "toothbrush"
    assert contiguous == [n for n in coco_official_names() if n != "N/A"]
    assert official_class_names("rtdetr", 80) == official_class_names("dfine", 80) == contiguous
    assert official_class_names("dino", 91) == official_class_names("detr", 91) == coco_official_names()
    assert official_class_names("rtdetr", 91) == [] and official_class_names("dino", 80) == []


def test_train_config_names_a_released_config_without_weights():
    from edgedet.commands.train import released_model_config, split_config_arg

    assert split_config_arg("dfine_hgnetv2_n_coco") == (None, "dfine_hgnetv2_n_coco")
    assert split_config_arg("dfine_hgnetv2_n_coco.yml") == (None, "dfine_hgnetv2_n_coco")
    cfg = released_model_config("dfine_hgnetv2_n_coco", ["DFINETransformer.num_queries=50"])
    assert cfg.name == "dfine" and cfg.backbone == "B0" and cfg.num_points == [6, 6] and cfg.num_queries == 50
    with pytest.raises(FileNotFoundError, match=re.escape("--config nothere.yaml: no such experiment YAML")):
        split_config_arg("nothere.yaml")
    with pytest.raises(ValueError, match="is D-FINE/DEIM .* not --model detr"):
        released_model_config("dfine_hgnetv2_n_coco", [], "detr")


def test_export_takes_the_same_config_and_update_flags():
    converters_api = pytest.importorskip("converters.api")
    path, updates = _fixture("dfine")
    model, experiment = converters_api.resolve_model(str(path), "dfine_hgnetv2_n_coco", updates)
    assert model.config.name == "dfine" and model.config.num_points == [4, 2] and experiment == {}
    with pytest.raises(converters_api.ExportError, match=re.escape(f"Run: edgedet export --model {path} --config dfine_hgnetv2_n_coco")):
        converters_api.resolve_model(str(path))
    with pytest.raises(converters_api.ExportError, match="describe an official checkpoint file"):
        converters_api.resolve_model("dfine", "dfine_hgnetv2_n_coco")


def test_weights_without_args_take_what_shapes_cannot_show_as_updates(tmp_path, capsys):
    src = REFERENCE / "detr" / "checkpoint.pth"
    if not src.is_file():
        pytest.skip(f"{src} not available")
    bare = tmp_path / "detr-r50-bare.pth"  # the DETR model zoo's layout: {'model': state_dict}, no args
    torch.save({"model": torch.load(src, weights_only=True)["model"]}, bare)
    err = _one_line_error(capsys, ["train", "--weights", str(bare), "--data", "synthetic"])
    assert "attention heads is not visible" in err and "--update nheads=N" in err
    weights = read_weights(bare, None, ["nheads=4"])  # the fixture was built with --nheads 4
    assert weights.config.nheads == 4 and weights.config.num_classes == 91
    reference = read_weights(src)  # with its args: the same model and tensors
    assert weights.config.hidden_dim == reference.config.hidden_dim and weights.state.keys() == reference.state.keys()
    assert all(torch.equal(weights.state[k], reference.state[k]) for k in reference.state)
    with pytest.raises(OfficialCheckpointError, match="only what its shapes cannot show.*nheads, dilation"):
        read_weights(bare, None, ["hidden_dim=64"])
    with pytest.raises(OfficialCheckpointError, match="carries its own config"):
        read_weights(src, None, ["nheads=4"])
