"""Issue #26: a run resumed after any epoch is bit-identical to the uninterrupted run, with evaluation every
epoch and the real data pipeline (random flips and scales draw from the same RNG the evaluation used to)."""
from __future__ import annotations

import random

import pytest
import torch

from _tiny_detector import TINY, TinyConfig
from edgedet.config import DataConfig, ExperimentConfig, TrainConfig
from edgedet.data import build_dataset
from edgedet.data.transforms import build_transforms
from edgedet.engine import checkpoint as ckpt_io
from edgedet.engine.plots import read_metrics
from edgedet.engine.trainer import train

EPOCHS = 3


def _cfg(out, root, epochs=EPOCHS):
    data = DataConfig(format="synthetic", root=str(root), synthetic_train_images=6, synthetic_val_images=3,
                      synthetic_image_size=48, scales=[40, 48], val_size=48, max_size=64, hflip=0.5,
                      color_jitter=[0.2, 0.2, 0.0, 0.0])
    train_cfg = TrainConfig(output_dir=str(out), epochs=epochs, batch_size=2, lr=1e-3, max_iters_per_epoch=3,
                            scheduler="step", lr_drop_epoch=2, eval_every=1, seed=5, ema=True, ema_decay=0.9)
    model = TinyConfig(name=TINY, num_classes=3, hidden_dim=16, num_queries=6)
    return ExperimentConfig(model=model, data=data, train=train_cfg)


def _datasets(cfg):
    return build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val")


def test_validation_transform_draws_no_random_numbers():
    data = DataConfig(val_size=48, max_size=64)
    image = torch.zeros(30, 40, 3, dtype=torch.uint8).numpy()
    target = {"boxes": torch.zeros(0, 4).numpy(), "labels": torch.zeros(0, dtype=torch.int64).numpy()}
    state = random.getstate()
    build_transforms(data, train=False)(image, target)
    assert random.getstate() == state  # a fixed resize must not advance the training augmentations' RNG


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    cfg = _cfg(tmp / "full", tmp / "data")
    return train(cfg, progress=False, datasets=_datasets(cfg)), tmp / "data"


@pytest.mark.parametrize("stop_after", range(EPOCHS - 1))
def test_resume_after_each_epoch_is_bit_identical_with_evaluation(tmp_path, stop_after, uninterrupted):
    full, root = uninterrupted
    cfg = _cfg(tmp_path / "part", root)
    first = train(_cfg(tmp_path / "part", root, epochs=stop_after + 1), progress=False, datasets=_datasets(cfg))
    resumed = train(_cfg(tmp_path / "part", root), resume=str(first), progress=False, datasets=_datasets(cfg))
    a, b = ckpt_io.load_checkpoint(resumed), ckpt_io.load_checkpoint(full)
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in b["ema"]["module"]:
        assert torch.equal(a["ema"]["module"][k], b["ema"]["module"][k]), k
    rows, full_rows = read_metrics(resumed.parent / "metrics.jsonl"), read_metrics(full.parent / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(EPOCHS))
    for r, f in zip(rows, full_rows):
        assert r["train_loss"] == f["train_loss"] and r["val_mAP"] == f["val_mAP"], r["epoch"]
