"""`edgedet eval`: COCO mAP of a trained checkpoint on a dataset split."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from edgedet.commands._data_arg import DATA_HELP, parse_data_arg


class EvalCommand:
    name = "eval"
    help = "evaluate a checkpoint with COCO metrics (e.g. edgedet eval --checkpoint runs/x/best.pth --data synthetic)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint", required=True, help="a .pth written by `edgedet train`")
        p.add_argument("--data", default=None, help=DATA_HELP + " (default: the checkpoint's own data config)")
        p.add_argument("--split", default="val", help="dataset split to score (default: val)")
        p.add_argument("--batch-size", type=int, default=2, help="images per forward pass")
        p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
        p.add_argument("--raw-weights", action="store_true", help="use the raw weights even if EMA weights were saved")
        p.add_argument("--json", metavar="FILE", help="also write the metrics to this JSON file")
        p.add_argument("--threads", type=int, default=0,
                       help="CPU threads (default: the cores not busy with other jobs, printed)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("--no-deployed-view", action="store_true",
                       help="skip the second figure: mAP as the default export sees the images (letterbox at its size)")

    def run(self, args: argparse.Namespace) -> int:
        from edgedet.data import build_dataset
        from edgedet.engine.checkpoint import checkpoint_config, load_checkpoint, load_model
        from edgedet.engine.evaluator import evaluate
        from edgedet.engine.threads import set_threads

        from edgedet.engine.distributed import check_device

        check_device(args.device)  # before loading anything
        if args.json:
            from runtime.safety import check_writable_file, refuse_output_over_input

            refuse_output_over_input([args.json], [args.checkpoint, args.data], what="--json")
            check_writable_file(args.json)
        cfg = checkpoint_config(load_checkpoint(args.checkpoint))
        data_cfg = parse_data_arg(args.data, cfg.data, allow_sections=True) if args.data else cfg.data
        model = load_model(args.checkpoint, args.device, prefer_ema=not args.raw_weights)
        print(set_threads(args.threads), file=sys.stderr)  # after the inputs are known to be good
        dataset = build_dataset(replace(data_cfg), args.split)
        if len(dataset.class_names) != model.config.num_classes:
            raise ValueError(f"the dataset has {len(dataset.class_names)} classes but the model predicts "
                             f"{model.config.num_classes}; evaluate on the dataset it was trained on")
        metrics = evaluate(model, dataset, args.batch_size, args.device, progress=not args.no_progress)
        width = max(len(k) for k in metrics)
        for k, v in metrics.items():
            print(f"{k:<{width}}  {v:.4f}" if k != "num_detections" else f"{k:<{width}}  {int(v)}")
        if not args.no_deployed_view:
            metrics.update(self._deployed_view(model, dataset, cfg, metrics, args))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(metrics, f, indent=2)
        sys.stdout.flush()
        return 0


    @staticmethod
    def _deployed_view(model, dataset, cfg, metrics, args) -> dict:
        """The same split as the default export will see it; both figures printed, a warning on a gap."""
        from edgedet.config import to_dict
        from edgedet.engine.deploy_eval import evaluate_deployed, gap_report

        dep = evaluate_deployed(model, dataset, to_dict(cfg), batch_size=args.batch_size, device=args.device,
                                progress=not args.no_progress)
        line, warning = gap_report(metrics, dep, cfg.model.name)
        print(line)
        if warning:
            print(f"WARNING: {warning}", file=sys.stderr)
        return {"deployed_mAP": dep["mAP"], "deployed_mAP50": dep["mAP50"], "deployed_imgsz": dep["imgsz"]}


COMMAND = EvalCommand()
