"""`--data synthetic` works for val and benchmark as it does for train and eval, and `export --calib synthetic`."""
import importlib.metadata
import json
from pathlib import Path

import pytest

from edgedet.cli import main

SHAPES = ["circle", "square", "triangle"]


@pytest.fixture()
def synthetic_plugin(monkeypatch, tmp_path):
    """The `synthetic_data` plug-in as setup.py registers it (an install made before it existed lacks it)."""
    import runtime.models

    monkeypatch.setenv("EDGEDET_CACHE", str(tmp_path / "cache"))
    installed = runtime.models.entry_points_in

    def with_plugin(group):
        found = installed(group)
        if group == "edgedet.plugins" and not any(ep.name == "synthetic_data" for ep in found):
            found = found + [importlib.metadata.EntryPoint("synthetic_data", "edgedet.data.builder:synthetic_annotations",
                                                           "edgedet.plugins")]
        return found

    monkeypatch.setattr(runtime.models, "entry_points_in", with_plugin)


def _shapes_artifact(folder: Path) -> Path:
    from runtime.testing import make_blob_artifact

    model = make_blob_artifact(folder)
    sidecar = Path(str(model) + ".edgedet.json")
    manifest = json.loads(sidecar.read_text())
    manifest["class_names"] = SHAPES  # the synthetic data's classes
    sidecar.write_text(json.dumps(manifest))
    return model


def test_val_and_benchmark_accept_synthetic(synthetic_plugin, tmp_path, capsys):
    model = _shapes_artifact(tmp_path / "m")
    assert main(["val", "--model", str(model), "--data", "synthetic", "--project", str(tmp_path / "runs"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "runs" / "val" / "1" / "metrics.json").read_text())
    assert metrics["images"] == 50 and metrics["instances"] > 50 and set(metrics["per_class"]) == set(SHAPES)
    assert main(["benchmark", "--model", str(model), "--data", "synthetic", "--project", str(tmp_path / "runs"), "--quiet"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = last["rows"] if isinstance(last, dict) else last
    assert isinstance(rows[0]["mAP"], float)


def test_synthetic_without_the_training_extra_is_one_line(monkeypatch, tmp_path, capsys):
    import runtime.models

    monkeypatch.setattr(runtime.models, "entry_points_in", lambda group: [])
    model = _shapes_artifact(tmp_path / "m")
    assert main(["val", "--model", str(model), "--data", "synthetic", "--project", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'edgedet[train]'" in err


def test_a_dataset_line_is_logged_once_per_process(tmp_path, caplog):
    """One export reads the val split three times (threshold, calibration, verify): `data ...: N images` once."""
    import logging

    from edgedet.config import DataConfig
    from edgedet.data import build_dataset

    cfg = DataConfig(format="synthetic", root=str(tmp_path / "syn"), synthetic_val_images=3, synthetic_image_size=64)
    with caplog.at_level(logging.INFO, logger="edgedet.data.builder"):
        for _ in range(3):
            build_dataset(cfg, "val")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO and r.getMessage().startswith("data synthetic:val")]
    assert lines == ["data synthetic:val: 3 images, " + lines[0].split(", ", 1)[1]]
