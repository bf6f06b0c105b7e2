"""benches/peers.py (edgedet vs Ultralytics YOLO on this CPU): its ratio arithmetic, flags, the venv's
stand-in version, and a `--quick` run of the edgedet side (slow). CI never builds the Ultralytics venv:
the YOLO side runs only where a previous full run left it in the cache."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from script_loader import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benches" / "peers.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(SCRIPT, "peers_bench")


def _row(model, precision, threads, p50):
    return {"model": model, "precision": precision, "threads": threads, "p50_ms": p50, "p95_ms": p50 * 1.1}


def test_ratios_compare_best_with_best_and_like_with_like(bench):
    rows = [_row("dfine-n", "f32", 1, 50.0), _row("dfine-n", "int8", 1, 20.0),
            _row("yolo26n", "f32", 1, 40.0), _row("yolo26n", "int8", 1, 25.0),
            _row("dfine-n", "f32", 2, 30.0), _row("yolo26n", "int8", 2, 15.0)]
    best = bench.best_rows(rows)
    assert best[1]["dfine-n"]["precision"] == "int8" and best[1]["yolo26n"]["precision"] == "int8"
    assert best[2]["dfine-n"]["precision"] == "f32"
    r = bench.ratios(rows)
    assert r[1]["dfine-n/yolo26n"] == {"best": 0.8, "f32": 1.25, "int8": 0.8}
    assert r[2]["dfine-n/yolo26n"] == {"best": 2.0}  # no common precision at 2 threads: best only
    assert "dfine-n/yolo11n" not in r[1]  # a model that did not run makes no pair
    assert bench.int8_speedups(rows) == {1: {"dfine-n": 2.5, "yolo26n": 1.6}}


def test_flags(bench, capsys):
    quick = bench.parse_args(["--quick"])
    assert (quick.models, quick.threads, quick.rounds, quick.calib_images, quick.peers) == (["dfine-n", "yolo26n"], [1], 3, 4, "cached")
    full = bench.parse_args([])
    assert full.threads == [1, 2] and full.peers == "build" and set(full.models) == set(bench.PUBLISHED_AP)
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "dfine-n,yolov8n"])
    assert "unknown --models yolov8n" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--threads", "0"])
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_standin_pairs_with_the_installed_torch(bench):
    v = bench.peers_venv
    assert v.standin_version("2.13.0+cpu") == "0.28.0+edgedet.standin"
    assert v.standin_version("2.14.1") == "0.29.0+edgedet.standin"
    assert v.standin_version("1.13.1") == "0.14.0+edgedet.standin"
    assert bench.has_bf16(["FP32", "BF16", "INT8"]) and not bench.has_bf16(["FP32", "INT8"])


def test_venv_is_never_built_unless_asked(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEDET_CACHE", str(tmp_path))
    assert bench.peers_venv.venv_python(build=False) is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_quick_run_of_the_edgedet_side():
    from converters.openvino.convert import fused_extension_available

    if not fused_extension_available():
        pytest.skip("fused OpenVINO extension not built (scripts/build_ov_extension.sh)")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--peers", "off"], cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["bench"] == "peers" and out["quick"] is True and out["skipped"] == {"yolo26n": "Ultralytics side off"}
    assert {(r["model"], r["precision"]) for r in out["rows"]} == {("dfine-n", "f32"), ("dfine-n", "int8")}
    assert all(0 < r["p50_ms"] <= r["p95_ms"] and r["coco_ap"] == 42.8 for r in out["rows"])
    assert out["int8_speedup"]["1"]["dfine-n"] > 0 and len(out["load_before"]) == 3
    assert "CPU: " in proc.stdout and "ISA: " in proc.stdout
