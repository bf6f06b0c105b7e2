"""Issue #12 / #14, training side: runs, checkpoints and metrics survive re-runs, kills, full disks and resumes."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from _tiny_detector import TINY, TinyConfig, TinyShapes
from edgedet.config import DataConfig, ExperimentConfig, TrainConfig
from edgedet.engine import checkpoint as ckpt_io
from edgedet.engine import trainer as trainer_mod
from edgedet.engine.trainer import train

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _cfg(out, **train_kw):
    tc = dict(output_dir=str(out), epochs=2, batch_size=2, lr=1e-3, max_iters_per_epoch=1, scheduler="step",
              lr_drop_epoch=1, warmup_iters=1, eval_every=1, seed=3, ema=True, ema_decay=0.9)
    tc.update(train_kw)
    model = TinyConfig(name=TINY, num_classes=3, hidden_dim=8, num_queries=4)
    return ExperimentConfig(model=model, data=DataConfig(format="synthetic"), train=TrainConfig(**tc))


def _datasets():
    return TinyShapes(4, seed=0), TinyShapes(2, seed=1)


def _rows(folder: Path):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- data loss 3: a new run never deletes an old one


def test_new_run_into_a_used_folder_starts_exp2_and_keeps_the_old_run(tmp_path):
    out = tmp_path / "exp"
    train(_cfg(out, epochs=1), progress=False, datasets=_datasets())
    before = {name: sha(out / name) for name in ("best.pth", "last.pth", "metrics.jsonl")}
    last = train(_cfg(out, epochs=1), progress=False, datasets=_datasets())
    assert last.parent == tmp_path / "exp2" and (tmp_path / "exp2" / "best.pth").is_file()
    assert {name: sha(out / name) for name in before} == before
    assert train(_cfg(out, epochs=1), progress=False, datasets=_datasets()).parent == tmp_path / "exp3"
    # --exist-ok writes into the folder as asked
    assert train(_cfg(out, epochs=1), progress=False, datasets=_datasets(), exist_ok=True).parent == out
    assert len(_rows(out)) == 1


def test_train_output_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; pass a folder"):
        train(_cfg(tmp_path / "file", epochs=1), progress=False, datasets=_datasets())
    with pytest.raises(PermissionError, match="choose a writable folder"):
        train(_cfg("/proc/edgedet-run", epochs=1), progress=False, datasets=_datasets())


# ---------------------------------------------------------------- #14: lean best.pth, present from the first evaluation


def test_best_is_lean_and_exists_from_the_first_evaluation_even_at_map_zero(tmp_path, monkeypatch):
    def zero_map(*args, **kwargs):
        return {"mAP": 0.0, "mAP50": 0.0, "num_detections": 0.0}

    monkeypatch.setattr(trainer_mod, "evaluate", zero_map)
    last = train(_cfg(tmp_path / "run", epochs=2), progress=False, datasets=_datasets())
    best_path = last.with_name("best.pth")
    best, resumable = ckpt_io.load_checkpoint(best_path), ckpt_io.load_checkpoint(last)
    for key in ckpt_io.RESUME_KEYS:
        assert key not in best, key
    assert {"optimizer", "scheduler", "rng"} <= set(resumable)  # (no scaler on CPU)
    assert {"model", "ema", "config", "metrics", "class_names"} <= set(best)
    assert best["class_names"] == list(TinyShapes.class_names) and best["metrics"]["val_mAP"] == 0.0
    assert best["epoch"] == 0  # no later epoch beat it
    assert best_path.stat().st_size < last.stat().st_size
    ckpt_io.load_model(best_path)  # inference from best.pth works
    with pytest.raises(ckpt_io.CheckpointError, match="resume from the run's last.pth"):
        train(_cfg(tmp_path / "run", epochs=3), resume=str(best_path), progress=False, datasets=_datasets())


def test_epoch_checkpoint_is_written_before_evaluation(tmp_path, monkeypatch):
    def broken_eval(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(trainer_mod, "evaluate", broken_eval)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        train(_cfg(tmp_path / "run", epochs=1), progress=False, datasets=_datasets())
    saved = ckpt_io.load_checkpoint(tmp_path / "run" / "last.pth")
    assert saved["epoch"] == 0 and "optimizer" in saved
    assert [r["epoch"] for r in _rows(tmp_path / "run")] == [0]


# ---------------------------------------------------------------- data loss 4: kill -9, temp files, fsync, full disk


KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_reliability_train import _cfg, _datasets
    from edgedet.engine import checkpoint as ckpt_io
    from edgedet.engine.trainer import train

    from edgedet.engine import trainer

    target, when = sys.argv[1], sys.argv[2]   # file name whose save of epoch 1 dies; 'before' or 'after' the rename
    real_replace, calls = os.replace, []

    def dying_replace(src, dst):
        epoch_1 = str(dst).endswith(target) and ckpt_io.load_checkpoint(src)["epoch"] == 1
        if epoch_1 and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)  # the temp file is fully written, the rename never happens
        real_replace(src, dst)
        if epoch_1 and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    def rising_map(*args, **kwargs):  # every evaluation a new best, so every epoch writes best.pth
        calls.append(1)
        return {"mAP": 0.1 * len(calls), "mAP50": 0.2 * len(calls), "num_detections": 1.0}

    os.replace, trainer.evaluate = dying_replace, rising_map
    train(_cfg(sys.argv[3], epochs=3), progress=False, datasets=_datasets())
""")


def _killed_run(tmp_path: Path, target: str, when: str) -> Path:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}"}
    proc = subprocess.run([sys.executable, "-c", KILLER.replace("{tests!r}", repr(str(TESTS))), target, when, str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return out


@pytest.mark.parametrize("target,when", [pytest.param("last.pth", "after", marks=pytest.mark.slow), ("best.pth", "before")])
def test_kill_9_leaves_best_and_last_consistent_and_resume_does_not_duplicate_metrics(tmp_path, target, when):
    out = _killed_run(tmp_path, target, when)
    last = ckpt_io.load_checkpoint(out / "last.pth")
    best = ckpt_io.load_checkpoint(out / "best.pth")  # exists: the first evaluation wrote it
    assert last["best_map"] <= best["best_map"]  # last.pth never records a best that best.pth lacks
    if when == "before":
        assert (out / "best.pth.tmp").exists()  # the torn write of the kill
    resumed = train(_cfg(out, epochs=3), resume=str(out / "last.pth"), progress=False, datasets=_datasets())
    assert resumed.parent == out and not list(out.glob("*.tmp"))
    epochs = [r["epoch"] for r in _rows(out)]
    assert epochs == [0, 1, 2]
    assert all("val_mAP" in r for r in _rows(out)[last["epoch"] + 1:])


def test_metrics_rows_are_one_per_epoch_after_resume(tmp_path):
    first = train(_cfg(tmp_path / "run", epochs=1), progress=False, datasets=_datasets())
    # a killed continuation had logged epoch 1 (and a torn line) after last.pth of epoch 0
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 1, "train_loss": 9.9}) + "\n" + '{"epoch": 2, "tra')
    train(_cfg(tmp_path / "run", epochs=2), resume=str(first), progress=False, datasets=_datasets())
    rows = _rows(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [0, 1] and rows[1]["train_loss"] != 9.9


def test_saves_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    ckpt_io.atomic_torch_save({"x": torch.zeros(3)}, tmp_path / "a.pth")
    assert events[:2] == ["fsync", "replace"]


def test_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = ckpt_io.atomic_torch_save({"epoch": 0, "w": torch.ones(4)}, tmp_path / "last.pth")
    before = sha(path)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save({"partial": torch.zeros(10)}, f)
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 8808960 vs 8808848")

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(ckpt_io.shutil, "disk_usage", lambda p: type("U", (), {"free": 1024})())
    with pytest.raises(ckpt_io.CheckpointError) as e:
        ckpt_io.atomic_torch_save({"epoch": 1}, path)
    msg = str(e.value)
    assert "no space left" in msg and "previous last.pth is intact" in msg and "\n" not in msg
    assert sha(path) == before and not list(tmp_path.glob("*.tmp"))

    def enospc(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", enospc)
    with pytest.raises(ckpt_io.CheckpointError, match="no space left"):
        ckpt_io.atomic_torch_save({"epoch": 1}, path)


def test_stale_temp_files_of_a_killed_run_are_removed_on_start(tmp_path, monkeypatch):
    first = train(_cfg(tmp_path / "run", epochs=1), progress=False, datasets=_datasets())
    for name in ("last.pth.tmp", "best.pth.tmp", "metrics.jsonl.tmp"):
        (tmp_path / "run" / name).write_bytes(b"torn")
    (tmp_path / "run" / "notes.tmp").write_text("the user's")

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod, "train_one_epoch", stop)  # removed on start, before any save could replace them
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path / "run", epochs=2), resume=str(first), progress=False, datasets=_datasets())
    assert sorted(p.name for p in (tmp_path / "run").glob("*.tmp")) == ["notes.tmp"]


# ---------------------------------------------------------------- silent wrong results on resume


def test_resume_with_a_changed_schedule_is_refused_not_recorded(tmp_path):
    first = train(_cfg(tmp_path / "run", epochs=1), progress=False, datasets=_datasets())
    before = sha(first)
    for change in (dict(lr=5e-4), dict(scheduler="cosine"), dict(lr_drop_epoch=5)):
        with pytest.raises(ckpt_io.CheckpointError, match="resuming .* with changed train\\.") as e:
            train(_cfg(tmp_path / "run", epochs=2, **change), resume=str(first), progress=False, datasets=_datasets())
        assert "\n" not in str(e.value)
    assert sha(first) == before
    cosine = train(_cfg(tmp_path / "cos", epochs=1, scheduler="cosine"), progress=False, datasets=_datasets())
    with pytest.raises(ckpt_io.CheckpointError, match="train.epochs 1 -> 2"):
        train(_cfg(tmp_path / "cos", epochs=2, scheduler="cosine"), resume=str(cosine), progress=False, datasets=_datasets())
    # more epochs with the step schedule is applied, and recorded as applied
    last = train(_cfg(tmp_path / "run", epochs=2), resume=str(first), progress=False, datasets=_datasets())
    assert ckpt_io.load_checkpoint(last)["config"]["train"]["epochs"] == 2 and ckpt_io.load_checkpoint(last)["epoch"] == 1


# ---------------------------------------------------------------- security: bytes that are not a checkpoint


def test_random_bytes_are_not_a_checkpoint_and_get_no_weights_only_advice(tmp_path):
    from edgedet.checkpoints import load_official

    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(4096))
    for load in (ckpt_io.load_checkpoint, load_official):
        with pytest.raises((ValueError, RuntimeError)) as e:
            load(junk)
        assert "weights_only" not in str(e.value) and "not" in str(e.value)
