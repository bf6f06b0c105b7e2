"""`edgedet convert-checkpoint`: official DETR-family weights -> an edgedet checkpoint.

    edgedet convert-checkpoint detr-r50.pth --from detr -o detr_r50.pth
    edgedet convert-checkpoint dab.pth -o dab.pth --set nheads=8   # args-less file: set what shapes hide
    edgedet convert-checkpoint rtdetrv2_r18vd_120e_coco_rerun_48.1.pth --config rtdetrv2_r18vd -o r18.pth
    edgedet convert-checkpoint mine.pth --config rtdetrv2_r18vd --update num_classes=5 --update eval_spatial_size=~ -o m.pth
    edgedet convert-checkpoint dfine_n_coco.pth --config dfine_hgnetv2_n_coco -o dfine_n.pth

The result loads with `edgedet.engine.checkpoint.load_model` (as `edgedet eval --checkpoint` does).
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List

import yaml


def parse_set_args(items: List[str]) -> Dict[str, Any]:
    """["nheads=4", "class_names=[a, b]"] -> {"nheads": 4, "class_names": ["a", "b"]} (values parsed as YAML)."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set '{item}' must look like field=value (e.g. --set nheads=8)")
        out[key.strip()] = yaml.safe_load(raw)
    return out


class ConvertCheckpointCommand:
    name = "convert-checkpoint"
    help = "convert an official DETR / Deformable-DETR / DAB-DETR / DINO / RT-DETRv2 / D-FINE / DEIM checkpoint to edgedet's format"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("src", help="checkpoint written by the official repository (.pth)")
        p.add_argument("--from", dest="family", default=None,
                       help="the family it comes from: detr, deformable_detr, dab_detr, dino, ... "
                            "(default: detected from the keys; validated when run, so --help needs no torch)")
        p.add_argument("-o", "--output", required=True, help="where to write the edgedet checkpoint (.pth)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                       help="model config field to set (repeatable), e.g. class_names=[cat,dog] or nheads=8 "
                            "for a checkpoint without args")
        p.add_argument("--config", default=None, metavar="NAME",
                       help="RT-DETRv2 / D-FINE / DEIM (their checkpoints carry no config): the released config it "
                            "was trained with, e.g. rtdetrv2_r18vd, rtdetrv2_r50vd, dfine_hgnetv2_n, deim_hgnetv2_s_coco "
                            "(validated when run: a wrong name lists the valid ones); 'rtdetr' = rtdetrv2_r18vd")
        p.add_argument("--update", dest="updates", action="append", default=[], metavar="KEY=VALUE",
                       help="with --config (RT-DETRv2 / D-FINE / DEIM): the official tools' override strings (repeatable), "
                            "e.g. HybridEncoder.hidden_dim=64, RTDETRTransformerv2.num_points=[4,3,2], "
                            "DFINETransformer.num_points=[4,2], num_classes=5; for a file saved without its args: "
                            "what its shapes cannot show (nheads=8)")

    def run(self, args: argparse.Namespace) -> int:
        from edgedet.checkpoints import convert_official, family_names

        if args.family is not None and args.family not in family_names():
            raise ValueError(f"--from {args.family}: unknown family; valid: {', '.join(family_names())}")
        from edgedet.checkpoints import OfficialCheckpointError
        from edgedet.checkpoints.released_configs import MissingConfigError, family_of_config, released_family

        config = "rtdetrv2_r18vd" if args.config == "rtdetr" else args.config
        try:
            out, model = convert_official(args.src, args.output, args.family, parse_set_args(args.overrides),
                                          config=config, updates=args.updates)
        except MissingConfigError as e:  # the command to run is this one
            raise OfficialCheckpointError(e.message(f"edgedet convert-checkpoint {args.src} {{config}} -o {args.output}")) from None
        if config is not None:
            print(f"{released_family(family_of_config(config)).title} config {config}"
                  + (f" with --update {' --update '.join(args.updates)}" if args.updates else ""))
        cfg = model.config
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{args.src} -> {out}: {cfg.name}, backbone {cfg.backbone}, {cfg.num_classes} classes, "
              f"{cfg.num_queries} queries, {n_params / 1e6:.1f}M parameters")
        return 0


COMMAND = ConvertCheckpointCommand()
