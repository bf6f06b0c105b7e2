"""Fine-tuning from pretrained weights: official fixtures, our checkpoints, ImageNet ResNets, keep_classes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from _tiny_detector import TinyShapes
from edgedet.cli import main as cli_main
from edgedet.config import ConfigError, DataConfig, ExperimentConfig, TrainConfig
from edgedet.engine import checkpoint as ckpt_io
from edgedet.engine.finetune import freeze_backbone, load_pretrained, read_weights, resolve_config
from edgedet.engine.trainer import train
from edgedet.models import create_model_from_config, default_config
from edgedet.nn.backbone import BACKBONES

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "reference"
FAMILIES = ["detr", "deformable_detr", "dab_detr", "dino"]
FOCAL_PRIOR = -math.log((1 - 0.01) / 0.01)


def fixture(family: str) -> Path:
    path = REFERENCE / family / "checkpoint.pth"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return path


def _finetune_cfg(out: Path, family: str, weights: Path, **model_kw) -> ExperimentConfig:
    model = default_config(family)
    model.weights = str(weights)
    for k, v in model_kw.items():
        setattr(model, k, v)
    train_cfg = TrainConfig(output_dir=str(out), epochs=1, batch_size=2, lr=0.0, max_iters_per_epoch=1,
                            warmup_iters=0, eval_every=0, seed=0)
    return ExperimentConfig(model=model, data=DataConfig(format="synthetic"), train=train_cfg)


@pytest.mark.parametrize("family", FAMILIES)
def test_lr0_finetune_keeps_loaded_tensors_and_reinitialises_class_heads(tmp_path, family):
    path = fixture(family)
    weights = read_weights(path)
    assert weights.kind == "official" and weights.config.name == family
    last = train(_finetune_cfg(tmp_path, family, path), progress=False, datasets=(TinyShapes(2), TinyShapes(1, seed=1)))
    ckpt = ckpt_io.load_checkpoint(last)
    state, cfg = ckpt["model"], ckpt_io.checkpoint_config(ckpt).model
    assert cfg.num_classes == 3 and cfg.class_names == ["red", "green", "blue"]
    assert cfg.hidden_dim == weights.config.hidden_dim and cfg.backbone == weights.config.backbone  # from the weights

    report = json.loads((tmp_path / "load_report.json").read_text())
    model = create_model_from_config(cfg)
    class_keys = model.class_dependent_keys()
    assert class_keys and sorted(report["reinitialised"]) == sorted(class_keys)
    assert report["counts"]["loaded"] + report["counts"]["reinitialised"] == len(state)
    assert report["counts"]["missing"] == 0 and report["counts"]["unused"] == 0
    assert (tmp_path / "load_report.txt").read_text().startswith(f"weights {path}")

    for k in report["loaded"]:  # lr 0: bit-equal to the checkpoint after training steps
        assert torch.equal(state[k], weights.state[k].float()), k
    for k in class_keys:
        extra = 1 if family == "detr" or k.startswith("label_enc") else 0
        assert state[k].shape[0] == 3 + extra, k
        assert weights.state[k].shape[0] != state[k].shape[0], k
        if k.endswith("bias") and family != "detr":  # the family's focal-loss prior
            assert torch.allclose(state[k], torch.full_like(state[k], FOCAL_PRIOR)), k


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_classes_copies_the_chosen_rows(family):
    weights = read_weights(fixture(family))
    cfg = resolve_config(_finetune_cfg(Path("."), family, weights.path, keep_classes=[2, 0]), weights).model
    cfg.num_classes, cfg.class_names = 2, ["b", "a"]
    model = create_model_from_config(cfg)
    report = load_pretrained(model, weights, [2, 0])
    assert sorted(report.kept_rows) == sorted(model.class_dependent_keys()) and not report.reinitialised
    src_count = weights.config.num_classes
    for k, v in model.state_dict().items():
        if k in report.kept_rows:
            extra = v.shape[0] - 2
            rows = [2, 0] + [src_count + j for j in range(extra)]
            assert torch.equal(v, weights.state[k].float()[rows]), k
    with pytest.raises(ConfigError, match="keep_classes has 1 entries but the dataset has 2"):
        load_pretrained(model, weights, [0])
    if weights.config.num_classes == 91:  # official COCO builds: COCO names in category-id order
        report = load_pretrained(model, weights, ["car", "person"])
        k = report.kept_rows[0]
        assert torch.equal(model.state_dict()[k][:2], weights.state[k].float()[[3, 1]])
    else:
        with pytest.raises(ConfigError, match="class names are unknown"):
            load_pretrained(model, weights, ["person", "car"])


def test_keep_classes_by_name_from_our_checkpoint(tmp_path):
    cfg = default_config("dab_detr")
    cfg.backbone, cfg.hidden_dim, cfg.enc_layers, cfg.dec_layers, cfg.num_queries = "resnet18", 32, 1, 1, 5
    cfg.nheads, cfg.dim_feedforward, cfg.num_classes, cfg.class_names = 4, 32, 3, ["cat", "dog", "car"]
    source = create_model_from_config(cfg)
    path = ckpt_io.save_checkpoint(tmp_path / "src.pth", source, ExperimentConfig(model=cfg), 0)
    weights = read_weights(path)
    assert weights.kind == "edgedet" and weights.class_names == ["cat", "dog", "car"]
    target_cfg = resolve_config(ExperimentConfig(model=default_config("dab_detr")), weights).model
    target_cfg.num_classes, target_cfg.class_names = 2, ["auto", "hund"]
    model = create_model_from_config(target_cfg)
    report = load_pretrained(model, weights, ["car", "dog"])
    assert torch.equal(model.class_embed.weight, source.class_embed.weight[[2, 1]])
    with pytest.raises(ConfigError, match="'bird' is not a class"):
        load_pretrained(model, weights, ["bird", "dog"])
    # The same classes in the same order: the class head is loaded, not re-initialised.
    same_cfg = resolve_config(ExperimentConfig(model=default_config("dab_detr")), weights).model
    same_cfg.num_classes, same_cfg.class_names = 3, ["cat", "dog", "car"]  # the dataset's, as the trainer sets them
    same = create_model_from_config(same_cfg)
    report = load_pretrained(same, weights)
    assert not report.reinitialised and torch.equal(same.class_embed.bias, source.class_embed.bias)


def test_conflicting_architecture_is_a_one_line_error(tmp_path, capsys):
    path = fixture("dino")
    weights = read_weights(path)
    cfg = _finetune_cfg(tmp_path, "dino", path, hidden_dim=128, dropout=0.3)
    with pytest.raises(ConfigError, match=r"model.hidden_dim=128 conflicts with the weights .* hidden_dim=256"):
        resolve_config(cfg, weights)
    ok = resolve_config(_finetune_cfg(tmp_path, "dino", path, dropout=0.3), weights).model  # training-only: allowed
    assert ok.dropout == 0.3 and ok.enc_layers == weights.config.enc_layers and ok.dn_labelbook_size is None
    with pytest.raises(ConfigError, match="holds a 'dino' model, not 'detr'"):
        resolve_config(_finetune_cfg(tmp_path, "detr", path), weights)
    rc = cli_main(["train", "--weights", str(path), "--data", "synthetic", "--set", "model.hidden_dim=128",
                   "--output", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "model.hidden_dim=128 conflicts" in err[0]


def _imagenet_state(name: str) -> dict:
    """A torchvision-format ImageNet state dict (fc head and BatchNorm counters included)."""
    torch.manual_seed(0)
    resnet = BACKBONES.get(name)(frozen_bn=True)
    state = {k: 0.05 * torch.randn_like(v) for k, v in resnet.state_dict().items()}
    for k in list(state):
        if k.endswith("running_var"):
            state[k] = torch.rand_like(state[k]) + 1.0
            state[k.replace("running_var", "weight")] += 1.0
            state[k.replace("running_var", "num_batches_tracked")] = torch.tensor(100)
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, resnet.channels[-1]), torch.randn(1000)
    return state


def test_imagenet_resnet_loads_into_the_backbone_only(tmp_path):
    state = _imagenet_state("resnet18")
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(state, path)
    weights = read_weights(path)
    assert weights.kind == "imagenet"
    cfg = _finetune_cfg(tmp_path / "run", "detr", path, backbone="resnet18", hidden_dim=32, enc_layers=1,
                        dec_layers=1, dim_feedforward=32, nheads=4, num_queries=5)
    last = train(cfg, progress=False, datasets=(TinyShapes(2), TinyShapes(1, seed=1)))
    model_state = ckpt_io.load_checkpoint(last)["model"]
    report = json.loads((tmp_path / "run" / "load_report.json").read_text())
    assert report["loaded"] and all(k.startswith("backbone.body.") for k in report["loaded"])
    assert report["counts"]["loaded"] + report["counts"]["missing"] == len(model_state)
    for k in report["loaded"]:
        assert torch.equal(model_state[k], state[k[len("backbone.body."):]]), k
    model = create_model_from_config(ckpt_io.checkpoint_config(ckpt_io.load_checkpoint(last)).model)
    frozen = freeze_backbone(model, 1)
    assert any(k.startswith("backbone.body.conv1") for k in frozen) and not any(".layer2." in k for k in frozen)
    with pytest.raises(ConfigError, match="ImageNet backbone"):
        from edgedet.engine.finetune import weights_family
        weights_family(path)


def test_co_detr_declares_its_auxiliary_class_heads():
    model = create_model_from_config(default_config("co_deformable_detr"))
    keys = model.class_dependent_keys()
    assert {"co.heads.0.atss_cls.weight", "co.heads.1.fc_cls.bias", "co.heads.1.fc_reg.weight", "class_embed.0.weight"} <= set(keys)
    n = model.config.num_classes
    assert all(model.state_dict()[k].shape[0] - model.class_rows_per_class(k) * n in (0, 1) for k in keys)


def test_freeze_backbone_stages():
    model = create_model_from_config(default_config("detr"))
    frozen = freeze_backbone(model, 2)
    assert any(".layer2." in k for k in frozen) and not any(".layer3." in k for k in frozen)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    assert len(freeze_backbone(model, -1)) == sum(1 for n, _ in model.named_parameters() if n.startswith("backbone."))
    with pytest.raises(ConfigError, match="freeze_backbone=7"):
        freeze_backbone(model, 7)


def test_trex_starts_from_dino_weights(tmp_path):
    """A family built on another (trex on dino) takes the shared architecture and tensors from its weights."""
    small = dict(backbone="resnet18", hidden_dim=32, nheads=4, enc_layers=1, dec_layers=1, dim_feedforward=32,
                 num_queries=6, enc_n_points=2, dec_n_points=2)
    dino_cfg = default_config("dino")
    for k, v in small.items():
        setattr(dino_cfg, k, v)
    dino_cfg.num_classes, dino_cfg.class_names = 2, ["a", "b"]
    dino = create_model_from_config(dino_cfg)
    path = ckpt_io.save_checkpoint(tmp_path / "dino.pth", dino, ExperimentConfig(model=dino_cfg), 0)
    weights = read_weights(path)
    trex_cfg = default_config("trex")
    trex_cfg.text_encoder, trex_cfg.prompt_dim, trex_cfg.max_prompts = "token", 16, 4
    cfg = resolve_config(ExperimentConfig(model=trex_cfg), weights).model
    assert cfg.name == "trex" and cfg.hidden_dim == 32 and cfg.backbone == "resnet18" and cfg.prompt_dim == 16
    cfg.num_classes, cfg.class_names = 3, ["x", "y", "z"]
    trex = create_model_from_config(cfg)
    report = load_pretrained(trex, weights)
    assert torch.equal(trex.backbone.body.conv1.weight, dino.backbone.body.conv1.weight)
    assert any(k.startswith("prompt_encoder.") for k in report.missing)
    assert "label_enc.weight" in report.unused and any(k.startswith("class_embed.") for k in report.unused)
    assert report.reinitialised == []  # trex's default prompts are absent from a DINO checkpoint: missing


def test_finetune_bench_plans_equal_step_budgets(tmp_path):
    from script_loader import load_script

    bench = load_script(Path(__file__).resolve().parents[1] / "benches" / "finetune.py", "finetune_bench")
    args = bench.parse_args(["--steps", "90", "--evals", "3", "--imgsz", "224", "--data", str(tmp_path)])
    cfg = bench.base_config(args)
    assert cfg.model.name == "dino" and cfg.train.epochs * cfg.train.max_iters_per_epoch == 90
    assert cfg.data.val_size == 224 and cfg.data.scales == [192, 224, 256] and cfg.train.time_budget_s == 0
    with pytest.raises(SystemExit, match="BCCD not found"):
        bench.main(["--data", str(tmp_path)])
