"""Run under torchrun (2 CPU processes, gloo) by tests/test_ddp.py.

Phase 1: DDP-wrapped tiny model trained a few steps through `train_one_epoch`; each rank saves
its initial and final weights. Phase 2: the full `train()` entry point, where rank 0 saves.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny_detector import TINY, TinyConfig, TinyShapes  # noqa: E402

from edgedet.config import DataConfig, ExperimentConfig, TrainConfig  # noqa: E402
from edgedet.data import build_dataloader  # noqa: E402
from edgedet.engine import checkpoint as ckpt_io  # noqa: E402
from edgedet.engine import distributed as ddp  # noqa: E402
from edgedet.engine.optim import build_optimizer, build_scheduler  # noqa: E402
from edgedet.engine.trainer import train, train_one_epoch  # noqa: E402
from edgedet.models import create_model_from_config  # noqa: E402

out = Path(sys.argv[1])
cfg = ExperimentConfig(model=TinyConfig(name=TINY, num_classes=3, hidden_dim=16, num_queries=6), data=DataConfig(),
                       train=TrainConfig(output_dir=str(out / "run"), epochs=2, batch_size=2, lr=1e-3, eval_every=1))
info = ddp.init_distributed("cpu")
assert info.world_size == 2, info
torch.manual_seed(100 + info.rank)  # different initial weights per rank: DDP must broadcast rank 0's
model = create_model_from_config(cfg.model)
init = {k: v.clone() for k, v in model.state_dict().items()}
wrapped = ddp.wrap_model(model, info, torch.device("cpu"))
loader = build_dataloader(TinyShapes(8), batch_size=2, shuffle=True, distributed=True, seed=0)
optimizer = build_optimizer(model, cfg.train)
scheduler = build_scheduler(optimizer, cfg.train, len(loader))
losses, iters, _ = train_one_epoch(wrapped, model.build_criterion(), loader, optimizer, scheduler, torch.device("cpu"),
                                   cfg, 0, progress=False)
torch.save({"init": init, "final": model.state_dict(), "iters": iters, "losses": losses}, out / f"rank{info.rank}.pt")
last = train(cfg, progress=False, datasets=(TinyShapes(8), TinyShapes(4, seed=1)))
torch.save(ckpt_io.rng_state(), out / f"rng_after_train{info.rank}.pt")  # nothing random ran after the last save
ddp.barrier()
ddp.cleanup()
