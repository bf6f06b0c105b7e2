"""scripts/gpu_check.py, the parts that run without a GPU: arguments, the build command, the
pytest summary parsing, the benchmark inputs, the DINO training steps (on the CPU), and the
one-line answer when CUDA is missing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from script_loader import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check():
    return load_script(REPO / "scripts" / "gpu_check.py", "gpu_check")


def test_arguments(check):
    args = check.parse_args([])
    assert args.repeats == 20 and args.train_steps == 30
    assert args.shapes == ["encoder", "decoder300", "decoder900", "rtdetrv2_300", "rtdetrv2_300_discrete"]
    args = check.parse_args(["--shapes", "encoder", "--repeats", "3", "--build-dir", "/tmp/b", "--device", "cuda:1"])
    assert args.shapes == ["encoder"] and args.repeats == 3 and args.build_dir == Path("/tmp/b")
    for bad in (["--repeats", "0"], ["--train-steps", "1"], ["--shapes", "huge"]):
        with pytest.raises(SystemExit):
            check.parse_args(bad)


def test_dry_run_prints_the_build_command(check, capsys):
    assert check.main(["--dry-run", "--build-dir", "/tmp/edgedet-ext"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    build = last["build"]
    assert build["name"] == "edgedet_msda_cuda" and build["build_directory"] == "/tmp/edgedet-ext"
    assert sorted(Path(s).name for s in build["sources"]) == ["msda_kernel.cu", "msda_torch.cpp"]
    assert all(Path(s).is_file() for s in build["sources"]) and "-O3" in build["extra_cuda_cflags"]


@pytest.mark.parametrize("line,expected", [
    ("23 passed in 41.2s", {"passed": 23, "failed": 0, "skipped": 0, "errors": 0}),
    ("2 failed, 20 passed, 1 skipped in 9.1s", {"passed": 20, "failed": 2, "skipped": 1, "errors": 0}),
    ("1 error in 0.3s", {"passed": 0, "failed": 0, "skipped": 0, "errors": 1}),
])
def test_pytest_summary(check, line, expected):
    assert check.parse_pytest_summary(line) == expected


def test_benchmark_inputs_are_benches_msda_problems(check):
    levels, points, method, inputs = check.msda_inputs("decoder300", "cpu")
    assert levels == [(80, 80), (40, 40), (20, 20), (10, 10)] and points is None and method == "default"
    assert inputs["value"].shape == (1, 8500, 8, 32) and inputs["sampling_locations"].shape == (1, 300, 8, 4, 4, 2)
    levels, points, method, inputs = check.msda_inputs("rtdetrv2_300_discrete", "cpu")
    assert points == (4, 4, 4) and method == "discrete" and inputs["attention_weights"].shape == (1, 300, 8, 12)
    levels, _, _, inputs = check.msda_inputs("encoder", "cpu")
    ref = inputs["sampling_locations"][0, :, 0, 0, 0]  # the encoder queries sit on the token centres
    assert inputs["sampling_locations"].shape[1] == 8500 and torch.allclose(ref.mean(0), torch.tensor([0.5, 0.5]), atol=0.05)
    weights = inputs["attention_weights"]
    assert torch.allclose(weights.flatten(3).sum(-1), torch.ones(1, 8500, 8), atol=1e-5)


def test_speed_rows_on_the_cpu(check, monkeypatch):
    """The timing code end to end, with `cuda` played by the reference (on the CPU)."""
    from edgedet.ops.msda import msda_pytorch
    from edgedet.registry import MSDA_IMPLS

    monkeypatch.setitem(MSDA_IMPLS._items, "cuda", msda_pytorch)
    monkeypatch.setattr(check, "SHAPES", {**check.SHAPES, "tiny": ([(8, 8), (4, 4)], 20, (2, 1), "discrete")})
    row = check.time_msda("tiny", 2, "cpu")
    assert row["shape"] == "tiny" and row["points"] == [2, 1] and row["method"] == "discrete"
    assert all(row[k] > 0 for k in ("pytorch_fwd_ms", "cuda_fwd_ms", "pytorch_fwd_bwd_ms", "cuda_fwd_bwd_ms"))


def test_training_steps_run_and_report(check):
    """The same steps on the CPU (no AMP): losses are finite and the report is complete; with one
    fixed batch and a few steps the loss falls."""
    torch.set_num_threads(1)
    report = check.train_steps(6, "cpu", amp=False)
    assert report["finite"] and report["steps"] == 6
    assert report["loss_last"] < report["loss_first"] and report["falls"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_without_cuda_it_says_so_and_exits_2():
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--skip-tests"], cwd=REPO, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert "CUDA is missing" in json.loads(proc.stdout.strip().splitlines()[-1])["error"]
