"""train.fit_to_budget across a kill and resume: the budget continues (the clock does not restart at zero)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from _tiny_detector import TINY, TinyConfig, TinyShapes
from edgedet.config import DataConfig, ExperimentConfig, TrainConfig
from edgedet.engine import checkpoint as ckpt_io
from edgedet.engine import trainer
from edgedet.engine.run_dir import read_metrics_rows

EPOCH_S = 60.0  # simulated seconds per epoch
BUDGET_S = 10 * EPOCH_S + 30  # fits 10 epochs


def _cfg(out):
    tc = TrainConfig(output_dir=str(out), epochs=50, batch_size=2, lr=1e-3, max_iters_per_epoch=1, scheduler="cosine",
                     warmup_iters=0, eval_every=0, seed=3, time_budget_s=BUDGET_S, fit_to_budget=True)
    model = TinyConfig(name=TINY, num_classes=3, hidden_dim=16, num_queries=6)
    return ExperimentConfig(model=model, data=DataConfig(format="synthetic"), train=tc)


@pytest.fixture
def simulated_clock(monkeypatch):
    """Every epoch takes EPOCH_S on the trainer's clock; `kill_at` raises KeyboardInterrupt before that epoch."""
    state = SimpleNamespace(now=1000.0, kill_at=None)
    monkeypatch.setattr(trainer, "time", SimpleNamespace(monotonic=lambda: state.now))
    real = trainer.train_one_epoch

    def one_epoch(*args, **kw):
        epoch = args[7]
        if state.kill_at is not None and epoch == state.kill_at:
            raise KeyboardInterrupt  # the process dies mid-run
        out = real(*args, **kw)
        state.now += EPOCH_S
        return out

    monkeypatch.setattr(trainer, "train_one_epoch", one_epoch)
    return state


def _datasets():
    return TinyShapes(4, seed=0), TinyShapes(2, seed=1)


def test_resumed_run_ends_within_one_epoch_of_the_uninterrupted_budget_end(tmp_path, simulated_clock):
    full = trainer.train(_cfg(tmp_path / "full"), progress=False, datasets=_datasets())
    full_rows = read_metrics_rows(full.parent / "metrics.jsonl")
    full_end = ckpt_io.load_checkpoint(full)["elapsed_s"]
    assert len(full_rows) == 10 and full_end == pytest.approx(10 * EPOCH_S)  # fitted to the budget

    simulated_clock.kill_at = 5  # killed half-way: last.pth holds epoch 4 and 5 epochs of time
    with pytest.raises(KeyboardInterrupt):
        trainer.train(_cfg(tmp_path / "part"), progress=False, datasets=_datasets())
    last = tmp_path / "part" / "last.pth"
    assert ckpt_io.load_checkpoint(last)["elapsed_s"] == pytest.approx(5 * EPOCH_S)

    simulated_clock.kill_at, simulated_clock.now = None, 50_000.0  # a later process: its clock starts elsewhere
    resumed = trainer.train(_cfg(tmp_path / "part"), resume=str(last), progress=False, datasets=_datasets())
    rows = read_metrics_rows(resumed.parent / "metrics.jsonl")
    end = ckpt_io.load_checkpoint(resumed)["elapsed_s"]
    # restarting the clock would give the resumed half a whole budget again (15 epochs, 900 s)
    assert abs(len(rows) - len(full_rows)) <= 1 and [r["epoch"] for r in rows] == list(range(len(rows)))
    assert abs(end - full_end) <= EPOCH_S and end <= BUDGET_S
    assert rows[-1]["lr"] == pytest.approx(full_rows[-1]["lr"])  # the cosine reached the same end
