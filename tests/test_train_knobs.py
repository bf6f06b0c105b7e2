"""Training size knobs (presets, --imgsz), thread defaults, and the run-level ETA/budget messages."""
import dataclasses

import pytest
import torch

from edgedet.config import DataConfig, TrainConfig
from edgedet.engine import threads
from edgedet.engine.trainer import _budget_shortfall, _duration, _fitted_epochs
from edgedet.models import create_model_from_config, default_config
from edgedet.presets import apply_imgsz, apply_preset


def test_nano_preset_sets_the_sizes_a_family_has():
    dd = apply_preset(default_config("deformable_detr"), "nano")
    assert (dd.backbone, dd.hidden_dim, dd.enc_layers, dd.num_feature_levels) == ("resnet10_slim", 128, 2, 3)
    detr = apply_preset(default_config("detr"), "nano")  # DETR has no feature levels: skipped, not an error
    assert detr.hidden_dim == 128 and not hasattr(detr, "num_feature_levels")
    assert apply_preset(default_config("dino"), "base") == default_config("dino")
    with pytest.raises(ValueError, match="valid: nano, small, base"):
        apply_preset(dd, "tiny")


def test_real_time_family_presets_are_released_configs():
    """--preset on RT-DETRv2 / D-FINE / RF-DETR picks a released size (the DETR sizes name a ResNet they lack)."""
    from edgedet.presets import released_config

    dfine = default_config("dfine")
    small = apply_preset(dataclasses.replace(dfine, weights="w.pth"), "small")
    assert small == dataclasses.replace(released_config("dfine", "dfine_hgnetv2_s_coco"), weights="w.pth")
    assert small.backbone == "B0" and small.hidden_dim == 256  # D-FINE-S: HGNetv2-B0 at width 256
    assert apply_preset(dfine, "nano").hidden_dim == 128  # D-FINE-N
    assert apply_preset(default_config("rtdetr"), "small").backbone == "presnet34"
    assert apply_preset(default_config("rfdetr"), "small").resolution == 512
    for family in ("rtdetr", "dfine", "rfdetr"):  # every preset builds (meta device: no memory, no init)
        for preset in ("nano", "small", "base"):
            with torch.device("meta"):
                create_model_from_config(apply_preset(default_config(family), preset))


def test_too_few_encoder_positions_for_the_queries_is_a_one_line_error():
    from edgedet.nn.rtdetr_decoder import select_topk

    memory, logits, coords = torch.zeros(1, 80, 8), torch.zeros(1, 80, 3), torch.zeros(1, 80, 4)
    with pytest.raises(ValueError, match=r"80 encoder positions, fewer than the 300 queries.*--imgsz.*num_queries=80"):
        select_topk(memory, logits, coords, 300)
    assert select_topk(memory, logits, coords, 80)[3].shape == (1, 80)


def test_imgsz_scales_train_and_val_sizes():
    d = apply_imgsz(DataConfig(scales=[224, 256, 288], val_size=256, max_size=512), 128)
    assert (d.val_size, d.scales, d.max_size) == (128, [112, 128, 144], 256)
    with pytest.raises(ValueError, match="at least 32"):
        apply_imgsz(DataConfig(), 8)


def test_default_threads_leave_busy_cores_alone(monkeypatch):
    monkeypatch.setattr(threads, "_cores", lambda: 2)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.7, 0, 0))
    assert threads.default_threads()[0] == 1
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.1, 0, 0))
    assert threads.default_threads()[0] == 2
    assert threads.default_threads(processes=2)[0] == 1
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (9.0, 0, 0))
    assert threads.default_threads()[0] == 1


def test_train_and_eval_take_threads_and_print_them(capsys, monkeypatch):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        assert threads.set_threads(1) == "threads: 1 (--threads; --threads N to change)"
        assert torch.get_num_threads() == 1
        assert "cores, load" in threads.set_threads(0)
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="--threads"):
        threads.set_threads(-1)
    from edgedet.cli import main

    for cmd in ("train", "eval"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "--threads" in capsys.readouterr().out


def test_budget_shortfall_names_the_epochs_that_fit():
    class Clock:
        def elapsed(self):
            return 120.0  # one epoch took 2 minutes

    tc = TrainConfig(epochs=20, time_budget_s=600, scheduler="cosine")
    msg = _budget_shortfall(tc, Clock(), 1, 0)
    assert "need ~40m00s" in msg and "--epochs 5 fits" in msg and "cosine" in msg
    assert _budget_shortfall(TrainConfig(epochs=4, time_budget_s=600), Clock(), 1, 0) is None
    assert _budget_shortfall(TrainConfig(epochs=20), Clock(), 1, 0) is None  # no budget
    assert _duration(3725) == "1h02m" and _duration(65) == "1m05s"


def test_fitted_epochs_end_the_schedule_within_the_budget():
    class Clock:
        def elapsed(self):
            return 120.0  # 2 epochs done in 4 minutes (evaluations included)

    # 10 minutes budget: 8 minutes left at 1 min/epoch -> 2 + 8 = 10 epochs (of the configured 40)
    assert _fitted_epochs(TrainConfig(epochs=40, time_budget_s=600), Clock(), 2, 0) == 10
    assert _fitted_epochs(TrainConfig(epochs=6, time_budget_s=600), Clock(), 2, 0) == 6  # never more than configured
    assert _fitted_epochs(TrainConfig(epochs=40, time_budget_s=130), Clock(), 2, 3) == 6  # at least one more epoch
    assert _fitted_epochs(TrainConfig(epochs=40, time_budget_s=600), Clock(), 2, 5) == 15  # resumed at epoch 5
    # fitted to 10 earlier, a faster pace wins epochs back up to the configured 40
    assert _fitted_epochs(TrainConfig(epochs=10, time_budget_s=1200), Clock(), 2, 0, cap=40) == 20


def test_small_presets_bring_the_from_scratch_recipe():
    from edgedet.presets import apply_preset_train

    model = apply_preset(default_config("dino"), "nano")
    tc = apply_preset_train(TrainConfig(), model, "nano")
    assert (tc.lr, tc.lr_backbone_mult, tc.scheduler) == (4e-4, 1.0, "cosine")
    import dataclasses

    pretrained = dataclasses.replace(model, backbone_weights="r18.pth")  # ImageNet weights: keep the defaults
    assert apply_preset_train(TrainConfig(), pretrained, "nano") == TrainConfig()
