"""`edgedet train`: train a registered detector on a dataset (single process or under torchrun)."""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace

from edgedet.commands._data_arg import DATA_HELP, parse_data_arg

log = logging.getLogger(__name__)


class TrainCommand:
    name = "train"
    help = ("train a detector (e.g. edgedet train --model deformable_detr --data synthetic --epochs 12) "
            "or fine-tune one (edgedet train --weights dino.pth --data my.yaml)")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="registered model name (e.g. detr, deformable_detr, dab_detr, dino)")
        p.add_argument("--config", metavar="YAML|NAME",
                       help="experiment YAML (model/data/train sections; flags below override it), or the released config "
                            "of official RT-DETRv2 / D-FINE / DEIM weights, e.g. rtdetrv2_r18vd or dfine_hgnetv2_n_coco "
                            "(their files carry none; without --weights: that architecture, untrained)")
        p.add_argument("--update", dest="updates", action="append", default=[], metavar="KEY=VALUE",
                       help="with a released --config: the official tools' override strings (repeatable), "
                            "e.g. --update HybridEncoder.hidden_dim=64 --update 'DFINETransformer.num_points=[4,2]'; "
                            "for official weights saved without their args: what the shapes cannot show (nheads=8)")
        p.add_argument("--data", default=None, help=DATA_HELP + " (default: synthetic)")
        p.add_argument("--epochs", type=int, help="number of epochs")
        p.add_argument("--batch-size", type=int, help="images per step and process")
        p.add_argument("--device", help="cpu, cuda or cuda:N")
        p.add_argument("--output", help="output folder for checkpoints, metrics.jsonl and curves.png")
        p.add_argument("--weights", metavar="PATH",
                       help="fine-tune from these weights: an `edgedet train` checkpoint, an official DETR-family "
                            "checkpoint (architecture taken from it when --model is absent) or a torchvision ImageNet ResNet")
        p.add_argument("--resume", metavar="CKPT", help="continue from a last.pth of the same model (in its folder)")
        p.add_argument("--exist-ok", action="store_true",
                       help="write into --output even if it holds an earlier run (default: the next free exp2, exp3 ...)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override any config value, e.g. --set model.num_queries=100 --set train.lr=2e-4 (repeatable)")
        p.add_argument("--preset", help="model size: nano (minutes on a CPU), small, base (the paper's); "
                       "also --set model.preset=NAME")
        p.add_argument("--imgsz", type=int, help="image size (shorter side) for training and validation; "
                       "the multi-scale list and max_size scale with it")
        p.add_argument("--threads", type=int, default=0,
                       help="CPU threads per process (default: the cores not busy with other jobs, printed)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(self, args: argparse.Namespace) -> int:
        from edgedet.config import ExperimentConfig, apply_overrides, load_experiment
        from edgedet.engine.finetune import weights_family
        from edgedet.engine.threads import set_threads
        from edgedet.engine.trainer import train
        from edgedet.models import default_config
        from edgedet.presets import apply_imgsz, apply_preset, apply_preset_train

        # `--set model.preset=nano` is the preset flag spelt as an override (ModelConfig has no such field)
        presets = [o.split("=", 1)[1] for o in args.overrides if o.startswith("model.preset=")]
        overrides = [o for o in args.overrides if not o.startswith("model.preset=")]
        preset = args.preset or (presets[-1] if presets else None)

        experiment, released = split_config_arg(args.config)
        if args.updates and not (released or args.weights):
            raise ValueError("--update KEY=VALUE changes a released config: pass it with --config NAME (e.g. rtdetrv2_r18vd, "
                             "dfine_hgnetv2_n_coco); for edgedet's own fields use --set model.FIELD=VALUE")
        if experiment:
            cfg = load_experiment(experiment)
            if args.model and args.model != cfg.model.name:
                cfg = replace(cfg, model=default_config(args.model))
        elif released and not args.weights:  # the released architecture, untrained
            cfg = ExperimentConfig(model=released_model_config(released, args.updates, args.model))
        elif args.model:
            cfg = ExperimentConfig(model=default_config(args.model))
        elif args.weights:  # the architecture comes from the weights
            cfg = ExperimentConfig(model=default_config(weights_family(args.weights)))
        else:
            raise ValueError("say which model to train: --model NAME, --config experiment.yaml or --weights PATH")
        if args.weights:
            cfg = replace(cfg, model=replace(cfg.model, weights=args.weights))
            if released or args.updates:  # --update alone: what official weights without args cannot show (nheads)
                cfg = replace(cfg, model=replace(cfg.model, weights_config=released, weights_updates=list(args.updates)))
        if args.data is not None or not experiment:
            cfg = replace(cfg, data=parse_data_arg(args.data or "synthetic", cfg.data))
        cfg = family_normalization(cfg)
        if preset:  # before the flags and --set, which override it
            cfg = replace(cfg, model=apply_preset(cfg.model, preset))
            cfg = replace(cfg, train=apply_preset_train(cfg.train, cfg.model, preset))
        output = args.output
        if args.resume and not output:  # continue the run where it lives
            from pathlib import Path

            output = str(Path(args.resume).parent)
        flags = {"epochs": args.epochs, "batch_size": args.batch_size, "device": args.device, "output_dir": output}
        cfg = replace(cfg, train=replace(cfg.train, **{k: v for k, v in flags.items() if v is not None}))
        if args.imgsz:
            cfg = replace(cfg, data=apply_imgsz(cfg.data, args.imgsz))
        cfg = apply_overrides(cfg, overrides)
        main_process = int(os.environ.get("RANK", "0") or 0) == 0  # under torchrun: one line, not one per rank
        threads = set_threads(args.threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
        if main_process:
            log.info("%s", threads)
        if main_process and (preset or args.imgsz):
            log.info("model %s preset %s, backbone %s, hidden %d; lr %g (backbone x%g, %s); images: shorter side %d "
                     "(train scales %s)", cfg.model.name, preset or "-", getattr(cfg.model, "encoder", None) or cfg.model.backbone,
                     cfg.model.hidden_dim,
                     cfg.train.lr, cfg.train.lr_backbone_mult, cfg.train.scheduler, cfg.data.val_size, cfg.data.scales)
        last = train(cfg, resume=args.resume, progress=not args.no_progress, exist_ok=args.exist_ok)
        if main_process:
            log.info("last checkpoint: %s", last)
        return 0


def split_config_arg(value):
    """--config -> (experiment YAML path, None) or (None, released config name) or (None, None); one-line error
    for a value that is neither an existing file nor a released config name."""
    from pathlib import Path

    from edgedet.checkpoints.released_configs import all_released_config_names, family_of_config

    if not value:
        return None, None
    if Path(value).is_file():
        return value, None
    name = value[:-4] if value.endswith(".yml") else value
    if name in all_released_config_names():
        return None, name
    owner = family_of_config(name)
    if owner is not None:
        from edgedet.checkpoints.released_configs import released_family

        spec = released_family(owner)
        raise ValueError(f"--config {value}: not a released {spec.title} config; released: {', '.join(spec.names())}")
    raise FileNotFoundError(f"--config {value}: no such experiment YAML, and not a released config name (e.g. rtdetrv2_r18vd, "
                            "dfine_hgnetv2_n_coco, deim_hgnetv2_s_coco)")


def released_model_config(name, updates, model=None):
    """The model config of released config `name` + --update strings, to train from scratch (logged as such)."""
    from edgedet.checkpoints.released_configs import family_of_config, released_family

    spec = released_family(family_of_config(name))
    if model and model != spec.family:
        raise ValueError(f"--config {name} is {spec.title} (model '{spec.family}'), not --model {model}: drop --model")
    log.warning("--config %s without --weights: training the released %s architecture from random weights; pass "
                "--weights PATH (its official .pth) to fine-tune it", name, spec.title)
    return spec.model_config(name, list(updates))  # the dataset then sets the classes


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
