"""`edgedet export`: the command-line face of `converters.export` (+ optional `verify`).

    edgedet export --model runs/train/best.pt --format openvino --precision int8 \
        --imgsz 640 640 --msda fused --calib data/images --output model.xml --verify --images data/images
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from converters.formats import FORMATS, MSDA_FORMS, PRECISIONS, list_formats

log = logging.getLogger(__name__)


class ExportCommand:
    name = "export"
    help = "export a checkpoint or model to ONNX / OpenVINO / TensorRT (optionally INT8) and verify it"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="checkpoint (.pt/.pth, edgedet or official) or a registered model name")
        p.add_argument("--config", default=None, metavar="NAME",
                       help="official RT-DETRv2 / D-FINE / DEIM weights (their files carry no config): the released "
                            "config, e.g. rtdetrv2_r18vd, dfine_hgnetv2_n_coco")
        p.add_argument("--update", dest="updates", action="append", default=[], metavar="KEY=VALUE",
                       help="with --config: the official tools' override strings (repeatable), e.g. num_classes=5")
        # Free text (not argparse choices) so a typo gets the table's suggestion.
        p.add_argument("--format", default="onnx", help=f"one of {', '.join(FORMATS)} (default onnx)")
        p.add_argument("--precision", default="fp32", help=f"one of {', '.join(PRECISIONS)} (default fp32)")
        p.add_argument("--imgsz", type=int, nargs=2, default=None, metavar=("H", "W"),
                       help="network input size (default: the checkpoint's training scale, printed; 640 640 without one)")
        p.add_argument("--msda", default=None, help=f"deformable-attention export form: {', '.join(MSDA_FORMS)} "
                       "(default: the format's own)")
        p.add_argument("--calib", default=None, help="folder of calibration images (needed for int8), or 'synthetic' "
                       "(the generated shapes `edgedet train --data synthetic` uses)")
        p.add_argument("--calib-images", type=int, default=32, help="number of calibration images used")
        p.add_argument("--output", default=None, help="artifact path or folder (default: runs/export/<checkpoint folder>-<stem>/<family>-<msda>-<precision><suffix>)")
        p.add_argument("--dynamic-batch", action="store_true", help="dynamic batch dimension")
        p.add_argument("--resize", default="letterbox", choices=["letterbox", "stretch"],
                       help="how the runtime fits frames to the input: letterbox (keep aspect, pad; default) or stretch")
        p.add_argument("--input-format", default="float32_nchw", choices=["float32_nchw", "uint8_nhwc"],
                       help="image input: normalised float32 (default) or the letterboxed uint8 BGR frames, normalised "
                            "inside the graph (less CPU work per frame: for a Jetson)")
        p.add_argument("--batch-profile", type=int, nargs=3, default=None, metavar=("MIN", "OPT", "MAX"),
                       help="tensorrt with --dynamic-batch: optimisation profile batches (default 1 8 8; OPT = your stream count)")
        p.add_argument("--raw", action="store_true", help="export raw pred_logits/pred_boxes instead of top-K detections")
        p.add_argument("--top-k", type=int, default=100, help="detections kept per image (postprocessed export)")
        p.add_argument("--score-threshold", type=float, default=None,
                       help="recommended minimum score stored in the manifest (default: best F1 on the checkpoint's "
                            "validation data, else 0.25); `edgedet run` and the examples use it when given no --conf")
        p.add_argument("--dedup-iou", type=float, default=None, metavar="IOU",
                       help="recommended duplicate filter stored in the manifest (class-wise NMS IoU, e.g. 0.7 for a "
                            "model that repeats boxes); predict/run/track use it when given no --dedup-iou")
        p.add_argument("--verify", action="store_true", help="compare the artifact with PyTorch afterwards")
        p.add_argument("--images", default=None, help="images for --verify (default: --calib, else the checkpoint's "
                       "validation images, else rendered frames)")
        p.add_argument("--data", default=None, help="with --verify: a labelled data set (the YAML `edgedet train` takes, or "
                       "'synthetic'); its val split is scored through the engine and through PyTorch, with a verdict")
        p.add_argument("--dry-run", action="store_true",
                       help="tensorrt: write only the ONNX the engine would be built from (no TensorRT needed)")
        p.add_argument("--exist-ok", action="store_true", help="replace existing files at --output (refused otherwise)")
        p.add_argument("--list-formats", action="store_true", help="print the format table and exit")
        p.add_argument("--quiet", action="store_true", help="only the final lines: what was exported and the verify verdict")

    def run(self, args: argparse.Namespace) -> int:
        if not getattr(args, "quiet", False):
            return self._run(args)
        root = logging.getLogger()
        level = root.level
        if level < logging.WARNING and not getattr(args, "verbose", False):
            root.setLevel(logging.WARNING)  # --quiet: warnings, then the final lines only
        try:
            return self._run(args)
        finally:
            root.setLevel(level)

    def _run(self, args: argparse.Namespace) -> int:
        if args.list_formats:
            for row in list_formats():
                print(json.dumps(row))
            return 0
        if not args.model:
            raise ValueError("--model is required (a checkpoint path or a model name)")
        from converters.api import export, resolve_model
        from converters.formats import get_format

        from converters.api import check_engine_builder

        check_engine_builder(get_format(args.format), args.dry_run)  # a misspelt format, no TensorRT: before any work
        _check_paths_before_export(args)

        from runtime.safety import refuse_output_over_input

        refuse_output_over_input([args.output], [args.model], what="--output")
        model, experiment = resolve_model(args.model, args.config, args.updates)  # once: --verify compares against it
        calib = _calib_source(args.calib, experiment)
        output = args.output
        if output is None:  # the checkpoint, not the deployable module, names the default folder
            from converters.export_defaults import default_output_dir

            output = str(default_output_dir(args.model)) + "/"
        from converters.export_defaults import training_accuracy

        path = export(
            model, experiment=experiment, training_accuracy=training_accuracy(args.model), format=args.format, output=output, precision=args.precision,
            imgsz=tuple(args.imgsz) if args.imgsz else None, dynamic_batch=args.dynamic_batch, msda=args.msda,
            calib=calib, postprocess=not args.raw, top_k=args.top_k, calib_images=args.calib_images,
            dry_run=args.dry_run, score_threshold=args.score_threshold, dedup_iou=args.dedup_iou,
            batch_profile=args.batch_profile, overwrite=args.exist_ok, input_format=args.input_format,
            resize=args.resize,
        )
        print(_describe(path, dry_run=args.dry_run and get_format(args.format).name == "tensorrt"))
        if args.verify:
            from converters.export_defaults import default_verify_images
            from converters.verify import format_report, verdict, verify

            images, what = (args.images, args.images) if args.images else default_verify_images(calib, experiment)
            log.info("verifying on %s", what)
            report = verify(path, model, images, eval_dataset=_verify_dataset(args.data, experiment), record=True)
            if not args.quiet:
                print(format_report(report))
            print(verdict(report))
        return 0


def _data_config(data, experiment):
    """`--data`/`--calib` given as 'synthetic' or a data YAML -> the DataConfig `edgedet train` would build."""
    from edgedet.commands._data_arg import parse_data_arg
    from edgedet.config import DataConfig, from_dict

    base = from_dict(DataConfig, experiment["data"], "data") if isinstance((experiment or {}).get("data"), dict) else None
    return parse_data_arg(data, base, allow_sections=True)


def _calib_source(calib, experiment):
    """--calib: a folder or image as given; 'synthetic' (as `train --data synthetic`): its generated val images."""
    if calib == "synthetic":
        return _data_config("synthetic", experiment)
    return calib


def _verify_dataset(data, experiment):
    """The val split of `--data` (same loader as `edgedet train`), or None."""
    if not data:
        return None
    from edgedet.data import build_dataset

    return build_dataset(_data_config(data, experiment), "val")


def _describe(path, dry_run: bool = False) -> str:
    """One line on what was written: the artifact and the manifest facts a user acts on."""
    from runtime.manifest import read_sidecar

    man = read_sidecar(path)
    if man is None:
        return f"exported {path}"
    h, w = man.preprocess.size
    if dry_run:  # its sidecar says onnxruntime, but the TensorRT plugin nodes in it run nowhere else
        fused = man.msda == "fused"
        return (f"TensorRT dry run: wrote {path}, the ONNX to build the {man.precision} engine from on the device "
                f"(msda {man.msda or '-'}{': TensorRT plugin nodes, not runnable in ONNX Runtime' if fused else ''}; "
                f"input {h}x{w}, score threshold {man.outputs.score_threshold:.3g}); build it there with trtexec "
                "or `edgedet export --format tensorrt` without --dry-run")
    calib = man.extra.get("calibration") if isinstance(man.extra, dict) else None
    calibrated = ""
    if calib:
        more = int(calib["available"]) - int(calib["images"])
        calibrated = (f"; calibrated on {calib['images']} of {calib['available']} images"
                      + (f" ({more} more available: --calib-images {calib['available']})" if more > 0 else ""))
    return (f"exported {path} ({man.backend} {man.precision}, msda {man.msda or '-'}, input {h}x{w}, "
            f"score threshold {man.outputs.score_threshold:.3g}{calibrated})")


def _check_paths_before_export(args: argparse.Namespace) -> None:
    """Arguments an export would trip over only after minutes of work, checked first."""
    if args.verify and args.dry_run:
        raise ValueError("--verify needs a built artifact but --dry-run writes only the ONNX; drop one of them")
    if args.score_threshold is not None and not 0.0 <= args.score_threshold <= 1.0:
        raise ValueError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    from converters.calibration import image_paths

    for flag, value in (("--calib", args.calib), ("--images", args.images if args.verify else None)):
        if value is not None and not (flag == "--calib" and value == "synthetic"):
            try:
                image_paths(value)
            except ValueError as e:
                raise ValueError(f"{flag} {value}: {e}") from None
    if args.data and not args.verify:
        raise ValueError("--data is used only by --verify (the engine's mAP against the checkpoint's): add --verify or drop --data")
    if args.images and not args.verify:
        raise ValueError("--images is used only by --verify: add --verify or drop --images")


EXPORT_COMMAND = ExportCommand()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="edgedet export", description=ExportCommand.help)
    EXPORT_COMMAND.add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return EXPORT_COMMAND.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
