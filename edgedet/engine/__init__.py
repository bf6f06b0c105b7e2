"""Training engine: optimiser and schedules, EMA, checkpoints, post-processing, evaluation, the
training loop and multi-process helpers. Import the submodules (e.g. `edgedet.engine.trainer`)."""
