"""The BCCD INT8 recipes: `configs/bccd_dino.yaml` and `configs/bccd_rtdetr.yaml` load and build their
models, and `benches/export_e2e.py` calibrates on a split other than the evaluated one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgedet.config import load_experiment
from edgedet.models import create_model_from_config
from script_loader import load_script

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "bccd_dino.yaml"
RTDETR_CONFIG = REPO / "configs" / "bccd_rtdetr.yaml"
BENCH = REPO / "benches" / "export_e2e.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(BENCH, "export_e2e_bench")


def test_bccd_config_builds_its_model():
    cfg = load_experiment(CONFIG)
    assert (cfg.model.name, cfg.data.format) == ("dino", "voc")
    assert (cfg.data.train_split, cfg.data.val_split) == ("train", "val")  # test stays held out
    # data.root is relative to the repository root, where the README runs the command
    assert (REPO / cfg.data.root).resolve() == (REPO.parent / "shared" / "data" / "bccd").resolve()
    cfg.model.num_classes = 3
    model = create_model_from_config(cfg.model).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 128, 160))  # 16x20 + 8x10 + 4x5 tokens >= 100 queries
    assert out["pred_logits"].shape == (1, cfg.model.num_queries, 3)
    assert out["pred_boxes"].shape == (1, cfg.model.num_queries, 4)


def test_bccd_rtdetr_config_builds_and_evaluates_at_the_export_size():
    from edgedet.data import collate_fn
    from edgedet.data.transforms import build_transforms, resize

    cfg = load_experiment(RTDETR_CONFIG)
    assert (cfg.model.name, cfg.data.format, cfg.data.val_split) == ("rtdetr", "voc", "val")
    assert (REPO / cfg.data.root).resolve() == (REPO.parent / "shared" / "data" / "bccd").resolve()
    cfg.model.num_classes = 3
    model = create_model_from_config(cfg.model).eval()
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
    image = np.zeros((480, 640, 3), np.uint8)  # every BCCD image
    x, _ = build_transforms(cfg.data, train=False)(image, empty)
    assert x.shape[1:] == (384, 512)  # validation = the README's export input, which RT-DETR takes
    sides = [resize(image, empty, s, cfg.data.max_size)[0].shape[:2] for s in cfg.data.scales]
    assert any(h % 32 or w % 32 for h, w in sides)  # training scales the padding has to round up
    batch, _, _ = collate_fn([(torch.zeros(3, h, w), {}) for h, w in sides], size_divisor=model.input_size_divisor)
    assert batch.shape[2] % 32 == 0 and batch.shape[3] % 32 == 0
    with torch.no_grad():
        out = model(torch.rand(1, 3, 128, 160))
    assert out["pred_logits"].shape == (1, cfg.model.num_queries, 3)


def test_speedups_pair_each_low_precision_engine_with_its_fp32(bench):
    rows = [{"family": "rtdetr", "backend": "openvino", "precision": p, "msda": m, "interleaved_p50_ms": t,
             **({"agree_fp32": 0.95} if p != "fp32" else {})}
            for p, m, t in [("fp32", "fused", 20.0), ("int8", "fused", 10.0), ("fp32", "grid_sample", 30.0),
                            ("fp16", "grid_sample", 40.0)]]
    rows.append({"family": "rtdetr", "backend": "pytorch", "precision": "fp32", "msda": "grid_sample", "latency_ms": 50.0})
    got = {(r["msda"], r["precision"]): (r["speedup_vs_fp32"], r["agree_fp32"]) for r in bench.speedups(rows)}
    assert got == {("fused", "int8"): (2.0, 0.95), ("grid_sample", "fp16"): (0.75, 0.95)}


def test_imgsz_takes_one_or_two_sizes(bench):
    assert bench.parse_imgsz(None, quick=False) == (640, 640)
    assert bench.parse_imgsz(None, quick=True) == (320, 320)
    assert bench.parse_imgsz([384], quick=False) == (384, 384)
    assert bench.parse_imgsz([384, 512], quick=False) == (384, 512)
    with pytest.raises(SystemExit, match="--imgsz"):
        bench.parse_imgsz([1, 2, 3], quick=False)


def _args(**kw):
    from types import SimpleNamespace

    base = dict(calib=None, data=None, data_format="voc", data_ann="", data_split="test", calib_split="train")
    return SimpleNamespace(**{**base, **kw})


def test_calibration_never_uses_the_evaluated_split(bench, tmp_path):
    with pytest.raises(SystemExit, match="evaluated split"):
        bench.calibration_source(_args(data=str(tmp_path), calib_split="test"))
    assert bench.calibration_source(_args(calib=str(tmp_path))) == str(tmp_path)  # an explicit folder wins


def test_bccd_calibration_comes_from_train(bench, shared):
    root = shared / "data" / "bccd"
    if not (root / "ImageSets" / "Main" / "test.txt").is_file():
        pytest.skip(f"BCCD is not at {root}")
    calib = bench.calibration_source(_args(data=str(root)))
    test_ids = set((root / "ImageSets" / "Main" / "test.txt").read_text().split())
    stems = {Path(r.path).stem for r in calib.records}
    assert len(stems) == 205 and not stems & test_ids
    assert calib.name == "voc:train"
