"""RT-DETR (and D-FINE) need input sides divisible by 32: batches are padded to it, with the runtime's
letterbox colour; a size that cannot work is a one-line error in the model, the config and the export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgedet import create_model
from edgedet.config import ConfigError, DataConfig, ExperimentConfig, from_dict, to_dict
from edgedet.data import build_dataloader, build_dataset, collate_fn
from edgedet.data.padding import batch_padding, check_input_size, pad_fill, resolve_size_divisor
from runtime.manifest import PreprocessSpec

TINY = dict(num_classes=3, encoder_hidden_dim=32, hidden_dim=32, nheads=4, encoder_nhead=2, encoder_dim_feedforward=64,
            dim_feedforward=64, dec_layers=2, num_queries=10, num_points=[2, 2, 1], num_denoising=10, backbone_frozen_bn=False)


def tiny():
    torch.manual_seed(0)
    return create_model("rtdetr", **TINY)


def test_collate_rounds_sides_up_to_the_divisor_and_fills_the_padding():
    a, b = torch.randn(3, 40, 70), torch.randn(3, 50, 30)
    images, mask, _ = collate_fn([(a, {}), (b, {})], size_divisor=32, fill=(0.5, 0.25, 0.0))
    assert images.shape == (2, 3, 64, 96) and mask.shape == (2, 64, 96)
    torch.testing.assert_close(images[0, :, :40, :70], a)
    assert not mask[1, :50, :30].any() and mask[1, 50:].all() and mask[1, :, 30:].all()
    assert (images[0, 0, 40:] == 0.5).all() and (images[1, 1, :, 30:] == 0.25).all() and (images[1, 2, 50:] == 0).all()


def test_the_model_declares_its_divisor_and_padding_colour():
    model = tiny()
    assert model.input_size_divisor == 32 and resolve_size_divisor(0, model) == 32 and resolve_size_divisor(64, model) == 64
    with pytest.raises(ConfigError, match="size_divisor 20 cannot work with 'rtdetr'.*divide by 32"):
        resolve_size_divisor(20, model)
    # RT-DETR sees padding as content: the letterbox colour of the deployed runtime, /255 with mean 0, std 1
    fill = pad_fill(model, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    np.testing.assert_allclose(fill, np.array(PreprocessSpec().pad_value) / 255.0, rtol=1e-6)
    assert pad_fill(create_model("detr", num_classes=3, backbone="resnet18"), (0.5,) * 3, (0.2,) * 3) is None
    with pytest.raises(ValueError, match="divisible by 32, got 72x100"):
        model.eval()(torch.zeros(1, 3, 72, 100))
    check_input_size(model, (384, 512))
    with pytest.raises(ValueError, match="imgsz 380x500 .*nearest valid H 352 or 384, W 480 or 512"):
        check_input_size(model, (380, 500))  # what `edgedet val --model best.pth --imgsz 380 500` says


def test_size_divisor_round_trips_through_the_config():
    cfg = DataConfig(size_divisor=64)
    assert to_dict(cfg)["size_divisor"] == 64 and from_dict(DataConfig, to_dict(cfg)) == cfg
    assert DataConfig().size_divisor == 0  # the model's own need


def test_rtdetr_trains_and_evaluates_on_sides_not_divisible_by_32(tmp_path):
    """Shorter side 72 of square synthetic images: 72x72 inputs broke the hybrid encoder before the padding."""
    from edgedet.engine.evaluator import evaluate
    from edgedet.engine.trainer import train
    from edgedet.models import default_config

    data = DataConfig(format="synthetic", root=str(tmp_path / "syn"), synthetic_train_images=2, synthetic_val_images=2,
                      synthetic_image_size=100, scales=[72], max_size=100, val_size=72,
                      mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    train_ds = build_dataset(data, "train")
    divisor, fill = batch_padding(tiny(), train_ds)
    images, _, targets = next(iter(build_dataloader(train_ds, 2, shuffle=False, size_divisor=divisor, fill=fill)))
    assert images.shape[-2:] == (96, 96) and tuple(targets[0]["size"]) == (72, 72)

    model_cfg = from_dict(type(default_config("rtdetr")), {"name": "rtdetr", **TINY})
    cfg = ExperimentConfig(model=model_cfg, data=data)
    cfg.train.epochs, cfg.train.batch_size, cfg.train.output_dir = 1, 2, str(tmp_path / "run")
    last = train(cfg, progress=False)
    row = json.loads((last.parent / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(row["train_loss"]) and "val_mAP" in row
    from edgedet.engine.checkpoint import load_model

    metrics = evaluate(load_model(str(last)), build_dataset(data, "val"), batch_size=2, progress=False)
    assert metrics["mAP"] >= 0.0


def test_export_names_valid_sizes_for_a_size_rtdetr_cannot_take(tmp_path):
    from converters.api import export
    from converters.formats import ExportError

    with pytest.raises(ExportError, match=r"divisible by 32: imgsz 100x128 .*nearest valid H 96 or 128, W 128"):
        export(tiny(), format="onnx", output=tmp_path / "m.onnx", imgsz=(100, 128), score_threshold=0.3)
    assert not (tmp_path / "m.onnx").exists()
