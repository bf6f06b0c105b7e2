"""`edgedet train`: train a registered detector on a dataset (single process or under torchrun)."""
from __future__ import annotations

import argparse
import logging
from dataclasses import replace

from edgedet.commands._data_arg import DATA_HELP, parse_data_arg

log = logging.getLogger(__name__)


class TrainCommand:
    name = "train"
    help = "train a detector (e.g. edgedet train --model deformable_detr --data synthetic --epochs 12)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="registered model name (e.g. detr, deformable_detr, dab_detr, dino)")
        p.add_argument("--config", help="experiment YAML (model/data/train sections); flags below override it")
        p.add_argument("--data", default=None, help=DATA_HELP + " (default: synthetic)")
        p.add_argument("--epochs", type=int, help="number of epochs")
        p.add_argument("--batch-size", type=int, help="images per step and process")
        p.add_argument("--device", help="cpu, cuda or cuda:N")
        p.add_argument("--output", help="output folder for checkpoints, metrics.jsonl and curves.png")
        p.add_argument("--resume", metavar="CKPT", help="continue from a last.pth of the same model")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override any config value, e.g. --set model.num_queries=100 --set train.lr=2e-4 (repeatable)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(self, args: argparse.Namespace) -> int:
        from edgedet.config import ExperimentConfig, apply_overrides, load_experiment
        from edgedet.engine.trainer import train
        from edgedet.models import default_config

        if args.config:
            cfg = load_experiment(args.config)
            if args.model and args.model != cfg.model.name:
                cfg = replace(cfg, model=default_config(args.model))
        elif args.model:
            cfg = ExperimentConfig(model=default_config(args.model))
        else:
            raise ValueError("say which model to train: --model NAME or --config experiment.yaml")
        if args.data is not None or not args.config:
            cfg = replace(cfg, data=parse_data_arg(args.data or "synthetic", cfg.data))
        cfg = family_normalization(cfg)
        flags = {"epochs": args.epochs, "batch_size": args.batch_size, "device": args.device, "output_dir": args.output}
        cfg = replace(cfg, train=replace(cfg.train, **{k: v for k, v in flags.items() if v is not None}))
        cfg = apply_overrides(cfg, args.overrides)
        last = train(cfg, resume=args.resume, progress=not args.no_progress)
        log.info("last checkpoint: %s", last)
        return 0


def family_normalization(cfg):
    """Input mean/std the model family declares (RT-DETR: /255 only) replace the ImageNet defaults.

    Only untouched defaults are replaced (an explicit data.mean/std, in YAML or --set, wins); printed.
    """
    from edgedet.config import DataConfig
    from edgedet.registry import MODELS

    meta = MODELS.meta(cfg.model.name)
    if "input_mean" not in meta:
        return cfg
    default = DataConfig()
    if tuple(cfg.data.mean) != tuple(default.mean) or tuple(cfg.data.std) != tuple(default.std):
        return cfg
    data = replace(cfg.data, mean=tuple(meta["input_mean"]), std=tuple(meta["input_std"]))
    log.info("model '%s' takes RGB/255 with mean %s and std %s (its official preprocessing); set data.mean/std to change",
             cfg.model.name, data.mean, data.std)
    return replace(cfg, data=data)


COMMAND = TrainCommand()
