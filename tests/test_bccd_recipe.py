"""The BCCD INT8 recipe: `configs/bccd_dino.yaml` loads and builds its model, and
`benches/export_e2e.py` calibrates on a split other than the evaluated one."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgedet.config import load_experiment
from edgedet.models import create_model_from_config
from script_loader import load_script

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "bccd_dino.yaml"
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
