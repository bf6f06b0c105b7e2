"""Every family fine-tunes from its own checkpoint to another class count: class tensors re-initialised, the rest loaded."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from _tiny_detector import TinyShapes
from edgedet.config import ExperimentConfig
from edgedet.data import build_dataloader
from edgedet.data.padding import batch_padding
from edgedet.engine import checkpoint as ckpt_io
from edgedet.engine.finetune import load_pretrained, read_weights, resolve_config
from edgedet.models import create_model_from_config, default_config
from export_helpers import tiny_overrides

FAMILIES = ["detr", "deformable_detr", "dab_detr", "dino", "co_dino", "co_deformable_detr", "trex", "rtdetr", "dfine"]
SOURCE_CLASSES = 5  # the checkpoint's; TinyShapes has 3


def _tiny_config(family: str):
    cfg = default_config(family)
    over = tiny_overrides(family)
    over.update(num_classes=SOURCE_CLASSES, aux_loss=True)
    if "hidden_dim" in over and family not in ("rtdetr", "dfine"):
        over["hidden_dim"] = 64  # GroupNorm(32) on the 1x1 extra level needs 2+ values per group
    if family == "rtdetr":
        over.update(backbone="presnet18")
    if hasattr(cfg, "dn_number"):
        over["dn_number"] = 4
    if hasattr(cfg, "num_denoising"):
        over["num_denoising"] = 4
    if family == "trex":
        over.update(text_encoder="token", prompt_dim=16, max_prompts=4)
    for k, v in over.items():
        setattr(cfg, k, v)
    cfg.class_names = [f"c{i}" for i in range(SOURCE_CLASSES)]
    return cfg


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return tmp_path_factory.mktemp("sources")


@pytest.mark.parametrize("family", FAMILIES)
def test_family_finetunes_to_a_new_class_count(family, sources):
    torch.manual_seed(0)
    cfg = _tiny_config(family)
    source = create_model_from_config(cfg)
    path = ckpt_io.save_checkpoint(sources / f"{family}.pth", source, ExperimentConfig(model=cfg), 0)
    src_state = {k: v.clone() for k, v in source.state_dict().items()}
    class_keys = source.class_dependent_keys()
    assert class_keys, family

    weights = read_weights(path)
    data = TinyShapes(2)
    target_cfg = resolve_config(ExperimentConfig(model=default_config(family)), weights).model
    target_cfg.num_classes, target_cfg.class_names = len(data.class_names), list(data.class_names)  # as the trainer sets them
    model = create_model_from_config(target_cfg)
    report = load_pretrained(model, weights)
    assert not report.missing and not report.unused, report.text()
    assert sorted(report.reinitialised) == sorted(class_keys) and not report.kept_rows
    state = model.state_dict()
    for k in class_keys:  # every class tensor now has the dataset's 3 classes (4 rows each for fc_reg)
        assert state[k].shape[1:] == src_state[k].shape[1:] and state[k].shape[0] < src_state[k].shape[0], k

    # One training step at lr 0 through the family's criterion: the new heads train, loaded tensors stay bit-equal.
    divisor, fill = batch_padding(model, data, 0)
    images, mask, targets = next(iter(build_dataloader(data, batch_size=2, shuffle=False, size_divisor=divisor, fill=fill)))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    model.train()
    criterion = model.build_criterion()
    loss = criterion.total_loss(criterion(model(images, mask, targets), targets))
    assert torch.isfinite(loss)
    loss.backward()
    params = dict(model.named_parameters())
    trained = [k for k in class_keys if k in params]  # trex's default prompts are a buffer, recomputed in training
    assert all(params[k].grad is not None for k in trained if k.endswith("weight")), family
    optimizer.step()
    after = model.state_dict()
    for k in report.loaded:
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):  # live BatchNorm statistics move
            assert torch.equal(after[k], src_state[k]), k


def test_co_detr_fc_reg_keeps_four_rows_per_class():
    cfg = _tiny_config("co_deformable_detr")
    source = create_model_from_config(cfg)
    keys = source.class_dependent_keys()
    reg = [k for k in keys if ".fc_reg." in k]
    assert reg and all(source.state_dict()[k].shape[0] == 4 * SOURCE_CLASSES for k in reg)
    assert all(source.class_rows_per_class(k) == 4 for k in reg)
    weights = read_weights(ckpt_io.save_checkpoint(Path(tempfile.mkdtemp()) / "co.pth", source, ExperimentConfig(model=cfg), 0))
    target_cfg = resolve_config(ExperimentConfig(model=default_config("co_deformable_detr")), weights).model
    target_cfg.num_classes, target_cfg.class_names = 2, ["c3", "c1"]
    target = create_model_from_config(target_cfg)
    report = load_pretrained(target, weights, ["c3", "c1"])
    assert sorted(report.kept_rows) == sorted(target.class_dependent_keys()) and not report.reinitialised
    for k in reg:  # class 3's four regression rows, then class 1's
        assert torch.equal(target.state_dict()[k], source.state_dict()[k][[12, 13, 14, 15, 4, 5, 6, 7]]), k
    fc_cls = reg[0].replace("fc_reg", "fc_cls")  # classifier: the two rows, then the background row
    assert torch.equal(target.state_dict()[fc_cls], source.state_dict()[fc_cls][[3, 1, SOURCE_CLASSES]])
