"""Training engine: exact resume, checkpoint errors, post-processing and COCO evaluation."""
import contextlib
import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from _tiny_detector import TINY, TinyConfig, TinyShapes
from edgedet.config import DataConfig, ExperimentConfig, TrainConfig
from edgedet.engine import checkpoint as ckpt_io
from edgedet.engine.evaluator import coco_metrics, evaluate, predict_coco
from edgedet.engine.plots import read_metrics
from edgedet.engine.postprocess import to_detections
from edgedet.engine.trainer import train
from edgedet.models import create_model_from_config


def _cfg(out, **train_kw):
    tc = dict(output_dir=str(out), epochs=2, batch_size=2, lr=1e-3, max_iters_per_epoch=2, scheduler="step",
              lr_drop_epoch=1, warmup_iters=1, eval_every=1, seed=3, ema=True, ema_decay=0.99)
    tc.update(train_kw)
    model = TinyConfig(name=TINY, num_classes=3, hidden_dim=16, num_queries=6)
    return ExperimentConfig(model=model, data=DataConfig(format="synthetic"), train=TrainConfig(**tc))


def _datasets():
    return TinyShapes(8, seed=0), TinyShapes(4, seed=1)


def test_resume_continues_exactly(tmp_path):
    full = read_metrics(train(_cfg(tmp_path / "full"), progress=False, datasets=_datasets()).parent / "metrics.jsonl")
    first = train(_cfg(tmp_path / "part", epochs=1), progress=False, datasets=_datasets())
    resumed = train(_cfg(tmp_path / "part"), resume=str(first), progress=False, datasets=_datasets())
    rows = read_metrics(resumed.parent / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1] and [r["epoch"] for r in full] == [0, 1]
    train_keys = [k for k in full[1] if k.startswith("train_")]
    assert "train_loss" in train_keys and "train_loss_ce_0" in train_keys
    for k in train_keys + ["lr", "val_mAP", "val_num_detections"]:
        assert rows[0][k] == full[0][k], k  # same seed, same run
        assert rows[1][k] == full[1][k], k  # resumed == uninterrupted
    assert full[0]["train_loss"] != full[1]["train_loss"]  # the steps did change the model
    a, b = ckpt_io.load_checkpoint(resumed), ckpt_io.load_checkpoint(tmp_path / "full" / "last.pth")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert (tmp_path / "full" / "curves.png").stat().st_size > 1000
    assert (tmp_path / "full" / "best.pth").exists()


def test_training_changes_weights_and_checkpoint_round_trips(tmp_path):
    cfg = _cfg(tmp_path, epochs=1, ema=False)
    last = train(cfg, progress=False, datasets=_datasets())
    torch.manual_seed(cfg.train.seed)
    init = create_model_from_config(replace(cfg.model, class_names=TinyShapes.class_names))
    model = ckpt_io.load_model(last)
    assert not model.training and model.config.class_names == TinyShapes.class_names
    assert not torch.equal(init.query.weight, model.query.weight)
    ckpt = torch.load(last, weights_only=True)  # plain tensors and values only
    assert ckpt["format"] == ckpt_io.FORMAT and ckpt["epoch"] == 0 and ckpt["config"]["model"]["name"] == TINY
    images = torch.stack([TinyShapes(4)[i][0] for i in (0, 2)])
    again = ckpt_io.load_model(last)
    assert torch.equal(model(images)["pred_boxes"], again(images)["pred_boxes"])


def test_checkpoint_errors_are_one_line(tmp_path):
    last = train(_cfg(tmp_path, epochs=1, eval_every=0), progress=False, datasets=_datasets())
    other = create_model_from_config(TinyConfig(name=TINY, num_classes=3, hidden_dim=8, num_queries=6))
    with pytest.raises(ckpt_io.CheckpointError) as e:
        ckpt_io.load_state_checked(other, ckpt_io.load_checkpoint(last)["model"], "checkpoint x")
    assert "does not fit this model" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ckpt_io.CheckpointError, match="holds a 'tiny_test' model, not 'detr'"):
        ckpt_io.check_same_model(ckpt_io.load_checkpoint(last), "detr", last)
    cfg = _cfg(tmp_path / "b")
    with pytest.raises(ckpt_io.CheckpointError, match="resume with --model tiny_test"):
        train(replace(cfg, model=replace(cfg.model, name="detr")), resume=str(last), progress=False, datasets=_datasets())
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(last.read_bytes()[:200])
    with pytest.raises(ckpt_io.CheckpointError, match="corrupt") as e:
        ckpt_io.load_model(corrupt)
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ckpt_io.load_model(tmp_path / "missing.pth")
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": {}}, foreign)
    with pytest.raises(ckpt_io.CheckpointError, match="not an edgedet checkpoint"):
        ckpt_io.load_model(foreign)


def test_time_budget_stops_after_the_running_epoch(tmp_path):
    last = train(_cfg(tmp_path, epochs=50, max_iters_per_epoch=0, time_budget_s=1e-3), progress=False, datasets=_datasets())
    rows = read_metrics(last.parent / "metrics.jsonl")
    assert len(rows) == 1 and rows[0]["iters"] == 1 and "val_mAP" in rows[0]


def test_fit_to_budget_shortens_the_cosine_so_it_ends_on_time(tmp_path, monkeypatch):
    from edgedet.engine import trainer

    monkeypatch.setattr(trainer, "_fitted_epochs", lambda *args: 3)  # "3 epochs fit the budget"
    kw = dict(epochs=50, scheduler="cosine", time_budget_s=3600, fit_to_budget=True, eval_every=0)
    last = train(_cfg(tmp_path / "fit", **kw), progress=False, datasets=_datasets())
    rows = read_metrics(last.parent / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[-1]["lr"] == pytest.approx(1e-3 * 0.01)  # the cosine reached its floor at the fitted end
    assert "val_mAP" in rows[-1]  # the fitted last epoch is evaluated as the last
    assert ckpt_io.load_checkpoint(last)["config"]["train"]["epochs"] == 3
    # fitted after the first epoch, the LR follows the 3-epoch cosine from then on
    plain = train(_cfg(tmp_path / "plain", **{**kw, "fit_to_budget": False, "epochs": 3}), progress=False,
                  datasets=_datasets())
    plain_rows = read_metrics(plain.parent / "metrics.jsonl")
    assert [r["lr"] for r in rows[1:]] == pytest.approx([r["lr"] for r in plain_rows[1:]])
    assert rows[0]["lr"] > plain_rows[0]["lr"]  # epoch 0 ran on the 50-epoch schedule, before the fit
    # killed (here: out of budget) and resumed, a fitted run keeps its fitted schedule and ends on time
    first = train(_cfg(tmp_path / "part", **{**kw, "time_budget_s": 1e-3}), progress=False, datasets=_datasets())
    resumed = train(_cfg(tmp_path / "part", **kw), resume=str(first), progress=False, datasets=_datasets())
    rows = read_metrics(resumed.parent / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[-1]["lr"] < 1e-4  # 5 of the fitted 6 steps (the killed epoch ran one); unfitted it would be ~1e-3


def _perfect_outputs(dataset, activation):
    """Model outputs that put each ground-truth box (with its class) on a query."""
    logits, boxes = [], []
    nq, nc = 6, len(dataset.class_names)
    for i in range(len(dataset)):
        t = dataset[i][1]
        lg = torch.full((nq, nc + (activation == "softmax")), -9.0)
        if activation == "softmax":
            lg[:, -1] = 9.0
        bx = torch.full((nq, 4), 0.5)
        for q, (c, b) in enumerate(zip(t["labels"], t["boxes"])):
            lg[q] = -9.0
            lg[q, c] = 9.0
            bx[q] = b
        logits.append(lg)
        boxes.append(bx)
    orig = torch.stack([dataset[i][1]["orig_size"] for i in range(len(dataset))])
    return {"pred_logits": torch.stack(logits), "pred_boxes": torch.stack(boxes)}, orig


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_perfect_predictions_score_map_one(activation):
    ds = TinyShapes(6, seed=4)
    outputs, orig = _perfect_outputs(ds, activation)
    dets = to_detections(outputs, orig, activation, top_k=10, class_names=ds.class_names)
    results = [r for i, d in enumerate(dets) for r in d.to_coco(i + 1, ds.category_ids)]
    metrics = coco_metrics(ds.coco_gt(), results)
    assert metrics["mAP"] == pytest.approx(1.0) and metrics["mAP50"] == pytest.approx(1.0)
    rec = ds.items[0]
    match = np.abs(dets[0].boxes_xyxy[:, None, :] - rec[1][None, :, :]).max(-1) < 1e-3  # back in pixels
    assert match.any(0).all()
    assert dets[0].image_size == (rec[3], rec[4]) and dets[0].names[0] in ds.class_names


def test_to_detections_top_k_semantics():
    logits = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 3.0, 0.5]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.25, 0.5, 0.5]]])
    orig = torch.tensor([[100, 200]])
    soft = to_detections({"pred_logits": logits, "pred_boxes": boxes}, orig, "softmax")[0]
    assert soft.labels.tolist() == [1, 0]  # one label per query, no-object column dropped
    assert np.allclose(soft.boxes_xyxy[0], [0, 0, 100, 50])
    sig = to_detections({"pred_logits": logits, "pred_boxes": boxes}, orig, "sigmoid", top_k=4)[0]
    assert sig.labels.tolist() == [1, 0, 2, 2] and np.allclose(sig.scores[0], torch.sigmoid(torch.tensor(3.0)).item())
    with pytest.raises(ValueError, match="Valid: softmax, sigmoid"):
        to_detections({"pred_logits": logits, "pred_boxes": boxes}, orig, "relu")


def test_to_detections_clips_to_the_image_when_asked():
    logits = torch.tensor([[[3.0, 0.0]]])
    boxes = torch.tensor([[[0.95, 0.05, 0.3, 0.3]]])  # sticks out right and top of a 100x200 (HxW) image
    out = {"pred_logits": logits, "pred_boxes": boxes}
    orig = torch.tensor([[100, 200]])
    assert np.allclose(to_detections(out, orig, "sigmoid", top_k=1)[0].boxes_xyxy, [[160, -10, 220, 20]])
    assert np.allclose(to_detections(out, orig, "sigmoid", top_k=1, clip=True)[0].boxes_xyxy, [[160, 0, 200, 20]])


def test_evaluate_equals_pycocotools_on_the_same_json(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    torch.manual_seed(0)
    model = create_model_from_config(TinyConfig(name=TINY, num_classes=3, hidden_dim=16, num_queries=6))
    ds = TinyShapes(6, seed=2)
    ours = evaluate(model, ds, batch_size=4, progress=False)
    from edgedet.data import build_dataloader

    results = predict_coco(model, build_dataloader(ds, 4, shuffle=False), ds.category_ids, progress=False)
    assert len(results) == ours["num_detections"] == 6 * 6
    (tmp_path / "dt.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ds.write_coco_json(tmp_path / "gt.json")))
        ev = COCOeval(gt, gt.loadRes(str(tmp_path / "dt.json")), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert [ours[k] for k in ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large", "AR1", "AR10",
                              "AR100", "AR_small", "AR_medium", "AR_large")] == pytest.approx(list(ev.stats), abs=1e-12)
    assert coco_metrics(ds.coco_gt(), [])["mAP"] == 0.0


def test_optimizer_groups_schedules_and_ema():
    from torch import nn

    from edgedet.engine.ema import ModelEMA
    from edgedet.engine.optim import LRFactor, build_optimizer

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Linear(2, 2)
            self.sampling_offsets = nn.Linear(2, 2)
            self.head = nn.Linear(2, 2)

    net = Net()
    opt = build_optimizer(net, TrainConfig(lr=1e-3, lr_backbone_mult=0.1, lr_linear_proj_mult=0.5))
    assert {g["name"]: g["lr"] for g in opt.param_groups} == pytest.approx({"backbone": 1e-4, "linear_proj": 5e-4, "other": 1e-3})
    step = LRFactor("step", iters_per_epoch=10, epochs=5, lr_drop_epoch=3, warmup_iters=4)
    assert [step(i) for i in (0, 3, 29, 30)] == pytest.approx([0.25, 1.0, 1.0, 0.1])
    cos = LRFactor("cosine", iters_per_epoch=10, epochs=2, lr_drop_epoch=0, warmup_iters=0, min_factor=0.0)
    assert [cos(i) for i in (0, 10, 20)] == pytest.approx([1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="Valid: step, cosine"):
        LRFactor("poly", 1, 1, 1, 0)
    ema = ModelEMA(net, decay=0.5)
    before = ema.module.head.weight.clone()
    with torch.no_grad():
        net.head.weight.add_(1.0)
    ema.update(net)  # d = min(0.5, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.module.head.weight, d * before + (1 - d) * net.head.weight)


def test_amp_bfloat16_training_runs_on_cpu(tmp_path):
    last = train(_cfg(tmp_path, epochs=1, max_iters_per_epoch=1, amp=True, eval_every=0), progress=False, datasets=_datasets())
    row = read_metrics(last.parent / "metrics.jsonl")[0]
    assert np.isfinite(row["train_loss"]) and row["iters"] == 1


def test_the_progress_bar_and_the_summary_count_epochs_the_same_way(tmp_path, monkeypatch, caplog):
    """Both say 'epoch 1/2' for the first epoch (the bar said 'epoch 0' while the summary said 'epoch 1/2')."""
    import logging

    import edgedet.engine.trainer as trainer

    bars = []
    real_tqdm = trainer.tqdm

    def recording_tqdm(*args, **kwargs):
        bars.append(kwargs.get("desc"))
        return real_tqdm(*args, **kwargs)

    monkeypatch.setattr(trainer, "tqdm", recording_tqdm)
    with caplog.at_level(logging.INFO, logger="edgedet.engine.trainer"):
        train(_cfg(tmp_path, eval_every=0), progress=True, datasets=_datasets())
    assert bars == ["epoch 1/2", "epoch 2/2"]
    assert "epoch 1/2: loss" in caplog.text and "epoch 2/2: loss" in caplog.text
