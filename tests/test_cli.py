"""`edgedet` CLI: help, one-line errors with exit code 2, and a train -> eval round trip."""
import json
import subprocess
import sys

import pytest

import _tiny_detector  # noqa: F401  (registers the tiny test model)
from edgedet.cli import main


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err
    return err


def test_help_lists_train_and_eval():
    proc = subprocess.run([sys.executable, "-m", "edgedet.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and "eval" in proc.stdout


def test_train_help_shows_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--data", "--epochs", "--set", "--output", "--resume"):
        assert flag in out


def test_unknown_model_lists_valid_names(capsys):
    _one_line_error(capsys, ["train", "--model", "detrr"], "unknown model 'detrr'", "Did you mean 'detr'", "deformable_detr")


def test_bad_set_key_lists_valid_keys(capsys):
    _one_line_error(capsys, ["train", "--model", "detr", "--set", "train.learning_rate=1"],
                    "unknown config key 'train.learning_rate'", "lr", "epochs")
    _one_line_error(capsys, ["train", "--model", "detr", "--set", "train.lr"], "section.key=value")


def test_missing_dataset_paths(capsys, tmp_path):
    _one_line_error(capsys, ["train", "--model", "detr", "--data", str(tmp_path / "nope.yaml")], "dataset config not found")
    cfg = tmp_path / "voc.yaml"
    cfg.write_text(f"format: voc\nroot: {tmp_path / 'no_voc_here'}\n")
    _one_line_error(capsys, ["train", "--model", "detr", "--data", str(cfg), "--output", str(tmp_path / "o")], "not found")
    _one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path / "x.pth")], "checkpoint not found")


def test_train_then_eval_round_trip(capsys, tmp_path):
    data = tmp_path / "data.yaml"
    data.write_text("data:\n  format: synthetic\n  root: syn\n  synthetic_train_images: 4\n  synthetic_val_images: 2\n"
                    "  synthetic_image_size: 64\n  scales: [64]\n  val_size: 64\n")
    out = tmp_path / "run"
    argv = ["train", "--model", "tiny_test", "--data", str(data), "--epochs", "1", "--batch-size", "2", "--output", str(out),
            "--set", "model.hidden_dim=16", "--set", "model.num_queries=5", "--no-progress"]
    assert main(argv) == 0
    assert (tmp_path / "syn").is_dir()  # relative root resolved next to the YAML file
    assert (out / "last.pth").exists() and (out / "metrics.jsonl").exists()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "last.pth"), "--json", str(tmp_path / "m.json"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "mAP50" in printed
    metrics = json.loads((tmp_path / "m.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics["mAP"] == pytest.approx(rows[-1]["val_mAP"])
    # resuming a different model's checkpoint: one line, exit code 2
    _one_line_error(capsys, ["train", "--model", "detr", "--data", str(data), "--output", str(tmp_path / "r"),
                             "--resume", str(out / "last.pth")], "holds a 'tiny_test' model")
