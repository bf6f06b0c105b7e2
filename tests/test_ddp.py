"""Two CPU processes under torchrun (gloo): DDP keeps the replicas identical while they learn."""
import os
import subprocess
import sys
from pathlib import Path

import torch

from edgedet.engine.plots import read_metrics
from edgedet.engine.trainer import restore_rng


def test_two_process_training_keeps_replicas_identical(tmp_path):
    worker = Path(__file__).resolve().parent / "_ddp_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(worker), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["iters"] == r1["iters"] == 2  # 8 images / 2 ranks / batch 2
    assert r0["losses"] == r1["losses"]  # epoch means are all-reduced
    assert any(not torch.equal(r0["init"][k], r1["init"][k]) for k in r0["init"])  # ranks started apart
    changed = False
    for k in r0["final"]:
        assert torch.equal(r0["final"][k], r1["final"][k]), k
        changed |= not torch.equal(r0["final"][k], r0["init"][k])
    assert changed
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")  # written once, by rank 0
    assert [r["epoch"] for r in rows] == [0, 1] and "val_mAP" in rows[-1]
    assert (tmp_path / "run" / "last.pth").exists()
    # Resume restores each rank's own RNG state: the checkpoint holds one per rank, and they differ.
    saved = torch.load(tmp_path / "run" / "last.pth", weights_only=True)["rng_per_rank"]
    assert len(saved) == 2 and not torch.equal(saved[0]["torch"], saved[1]["torch"])
    for r in (0, 1):
        assert torch.equal(saved[r]["torch"], torch.load(tmp_path / f"rng_after_train{r}.pt", weights_only=True)["torch"])
        restore_rng({"rng_per_rank": saved, "rng": saved[0]}, r, 2)
        assert torch.equal(torch.get_rng_state(), saved[r]["torch"])
