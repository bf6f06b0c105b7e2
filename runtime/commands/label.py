"""`edgedet label`: auto-label images and videos with the prompted detector -> a YOLO + COCO data set.

    edgedet label --model export/ --boxes 40,60,120,150 200,80,260,140 --names bolt nut \\
                  --source clips/*.mp4 --output bolts_ds
    edgedet label --model prompted.pth --prompts runs/prompts/parts.npz --source photos/ --output parts_ds --ray
    edgedet train --data bolts_ds/data.yaml --model dfine

Re-running the same command resumes (images already labelled are skipped); `--conf T` on a finished
data set rewrites the labels at T from the stored scores without running the detector again.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from runtime.commands.common import source_arg


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="prompted export folder (trex-detector + trex-prompt-encoder), its detector artifact, or a trex .pth checkpoint")
    parser.add_argument("--source", required=True, nargs="+", type=str,
                        help="images, folders, quoted globs and/or video files (frames are extracted)")
    parser.add_argument("--output", required=True, help="data set folder: new, empty, or one this command wrote (resumed)")
    prompts = parser.add_argument_group("prompts (a prompts file, or boxes and/or texts)")
    prompts.add_argument("--prompts", default=None, metavar="FILE.npz", help="prompts saved on the live page or by save_prompts")
    prompts.add_argument("--boxes", nargs="+", default=[], metavar="X1,Y1,X2,Y2", help="exemplar boxes in --prompt-image pixels")
    prompts.add_argument("--names", nargs="+", default=[], help="a class name per --boxes box (or one for all)")
    prompts.add_argument("--text", nargs="+", default=[], metavar="NAME", help="text prompts (each text is a class)")
    prompts.add_argument("--prompt-image", default=None, help="image the --boxes are drawn on (default: the first source image or frame)")
    prompts.add_argument("--prompt-encoder", default=None, help="the prompt encoder artifact, when not beside --model")
    parser.add_argument("--conf", type=float, default=None,
                        help="label threshold (default: best F1 on --gt, else the detector manifest's); boxes down to "
                             "--floor are kept with their scores either way")
    parser.add_argument("--gt", default=None, help="ground truth for some source images (COCO JSON, YOLO/VOC folder, data "
                        "YAML; file names as the sources', frames <video stem>_<frame:06d>): the threshold is chosen on it")
    parser.add_argument("--gt-split", default="val", help="split of --gt (default val)")
    parser.add_argument("--every", type=int, default=1, help="videos: label every Nth frame (default 1: all)")
    parser.add_argument("--floor", type=float, default=None, help="lowest score kept in the scores sidecar (default 0.05)")
    parser.add_argument("--backend", default="auto", help="auto (by suffix), onnxruntime, openvino or tensorrt")
    parser.add_argument("--device", default="CPU", help="CPU, cuda, cuda:N (onnxruntime); CPU, GPU, NPU (openvino)")
    add_ray_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-run lines")


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Ray (pip install 'edgedet[ray]')")
    group.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                       help="run the detectors in a Ray Data actor pool: no ADDRESS starts a small local cluster "
                            "(shut down at the end); ADDRESS (auto, ray://host:10001, host:6379) joins an existing one")
    group.add_argument("--actors", type=int, default=2, help="with --ray: engines (actors) in the pool, one engine each (default 2)")


class LabelCommand:
    name = "label"
    help = "auto-label images/videos with the prompted detector: YOLO data set + COCO JSON + scores, ready for `edgedet train`"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_label_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from runtime.label import LabelConfig, format_summary, label
        from runtime.label.engine import SCORING_FLOOR

        cfg = LabelConfig(model=args.model, sources=[str(source_arg(s)) for s in args.source], output=args.output,
                          prompts=args.prompts, boxes=args.boxes, names=args.names, texts=args.text,
                          prompt_image=args.prompt_image, prompt_encoder=args.prompt_encoder, conf=args.conf, gt=args.gt,
                          gt_split=args.gt_split, every=args.every, backend=args.backend, device=args.device,
                          floor=SCORING_FLOOR if args.floor is None else args.floor, ray=args.ray, actors=args.actors,
                          quiet=args.quiet)
        summary = label(cfg)
        print(format_summary(summary))
        return 0


LABEL_COMMAND = LabelCommand()


def main(argv: Optional[List[str]] = None) -> int:
    """`python -m runtime.commands.label ...` (the same as `edgedet label ...`)."""
    parser = argparse.ArgumentParser(prog="edgedet label", description=LABEL_COMMAND.help)
    LABEL_COMMAND.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return LABEL_COMMAND.run(args)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as e:  # bad input: one line, as `edgedet` prints it
        print(f"edgedet label: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["LABEL_COMMAND", "add_ray_arguments", "main"]
