"""The convergence bench (`benches/convergence.py`): its budget planning and flag checks (fast), and a
`--quick` end-to-end run of two families on the synthetic data (slow)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from script_loader import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benches" / "convergence.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(SCRIPT, "convergence_bench")


def test_plan_fills_budget_with_full_epochs(bench):
    # 10 iterations of 1 s + 2 eval batches of 0.5 s + 1 s COCOeval = 12 s an epoch; 0.9 * 120 s -> 9 epochs.
    assert bench.plan(10, 2, 120.0, 1.0, 0.5, min_evals=4) == (9, 0)


def test_plan_shortens_epochs_to_keep_min_evals(bench):
    # 100 iterations of 1 s do not fit 4 times in 0.9 * 100 s: 4 epochs of (22.5 - 2) // 1 = 20 iterations.
    assert bench.plan(100, 2, 100.0, 1.0, 0.5, min_evals=4) == (4, 20)
    # Evaluation alone exceeds the budget: still one iteration per epoch.
    assert bench.plan(100, 50, 10.0, 1.0, 1.0, min_evals=4) == (4, 1)


def test_recipes_share_architecture_and_training(bench):
    from _recipes import MODELS, SHARED_MODEL, model_config

    for name in MODELS:
        cfg = model_config(name)
        assert cfg.name == name
        for key in ("backbone", "hidden_dim", "num_queries", "enc_layers", "dec_layers", "backbone_frozen_bn"):
            assert getattr(cfg, key) == SHARED_MODEL[key], (name, key)
    assert model_config("dino").num_feature_levels == model_config("deformable_detr").num_feature_levels


def test_bad_flags_exit_with_a_message(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "detr,yolo"])
    assert "unknown model 'yolo'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--budget-min", "0"])
    assert "needs --epochs" in capsys.readouterr().err


def test_missing_bccd_is_skipped(bench, tmp_path):
    args = bench.parse_args(["--bccd-root", str(tmp_path / "nope")])
    assert "BCCD not found" in bench.DATASETS["bccd"].missing(args)


@pytest.mark.slow
def test_quick_run_prints_json_and_plot(tmp_path):
    out = tmp_path / "conv"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--models", "detr,dab_detr", "--datasets",
                           "synthetic", "--out", str(out), "--no-progress"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["bench"] == "convergence" and summary["quick"] is True
    per_model = summary["results"]["synthetic"]
    assert set(per_model) == {"detr", "dab_detr"}
    for r in per_model.values():
        assert {"mAP", "mAP50", "epochs", "evals", "iters", "seconds", "curve"} <= set(r)
        assert r["evals"] == 2 and r["iters"] == 4  # --quick: 2 epochs of 2 iterations, evaluated after each
        assert 0.0 <= r["mAP"] <= r["mAP50"] <= 1.0
        assert [c["epoch"] for c in r["curve"]] == sorted(c["epoch"] for c in r["curve"])
    plot = Path(summary["plot"])
    assert plot == out / "convergence.png" and plot.stat().st_size > 1000
    assert json.loads((out / "results.json").read_text())["results"] == summary["results"]
    assert not list(out.rglob("*.pth"))  # checkpoints removed unless --keep-checkpoints
