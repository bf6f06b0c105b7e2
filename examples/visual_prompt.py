"""Find every object that looks like the ones boxed on an example image, in a video.

    # once, where torch is installed: export the prompted detector (two artifacts + text bank);
    # without --checkpoint the embedded edgedet/assets/prompted_detector.pth (synthetic shapes)
    python examples/visual_prompt.py export --checkpoint trex.pt --out artifacts/

    # then, torch-free: box a few examples on one image, run on a video
    python examples/visual_prompt.py run --artifacts artifacts/ --image shelf.jpg \
        --box 120,40,180,110 --box 300,60,350,130 --name bottle --video aisle.mp4 --save found.mp4

Prompts are encoded once (and can be saved with --save-prompts for later runs with
--load-prompts); every frame then runs only the detector.
"""
import argparse
from pathlib import Path

import cv2

EMBEDDED = Path(__file__).resolve().parents[1] / "edgedet" / "assets" / "prompted_detector.pth"
EMBEDDED_IMGSZ = (256, 448)  # the embedded model was trained on ~256 px images of shapes


def export(args: argparse.Namespace) -> None:
    from converters.api import resolve_model
    from converters.prompted import export_prompted

    checkpoint = args.checkpoint or EMBEDDED
    imgsz = args.imgsz or (EMBEDDED_IMGSZ if checkpoint == EMBEDDED else (640, 640))
    model, experiment = resolve_model(checkpoint)
    enc, det = export_prompted(model, args.out, format=args.format, imgsz=(imgsz[0], imgsz[-1]), experiment=experiment,
                               text_encoder=args.text_encoder, dry_run=args.dry_run, overwrite=args.exist_ok)
    print(f"wrote {enc} and {det}")


def run(args: argparse.Namespace) -> None:
    from runtime import Pipeline, ShowSink, VideoSink, open_source
    from runtime.prompted import PromptedDetector

    from runtime.safety import refuse_output_over_input

    folder = Path(args.artifacts)
    suffix = ".engine" if args.tensorrt else ".xml" if args.openvino else ".onnx"
    encoder, det_path = folder / f"trex-prompt-encoder{suffix}", folder / f"trex-detector{suffix}"
    # before anything opens: an output never replaces an input or a file of the artifacts (text bank, sidecars)
    refuse_output_over_input([args.save_prompts, args.save], [encoder, det_path, args.image, args.video, args.load_prompts])
    detector = PromptedDetector(encoder, det_path, device=args.device, conf=args.conf)
    if args.load_prompts:
        detector.load_prompts(args.load_prompts)
    else:
        image = cv2.imread(args.image) if args.image and Path(args.image).is_file() else None
        if image is None:
            raise FileNotFoundError(f"cannot read the example image {args.image}: give --image with the boxes drawn on it")
        boxes = [[float(v) for v in b.split(",")] for b in args.box]
        points = [[float(v) for v in p.split(",")] for p in args.point]
        detector.set_prompts(image, boxes=boxes or None, points=points or None, names=args.name, texts=args.text)
    if args.save_prompts:
        detector.save_prompts(args.save_prompts)
    print(f"prompts: {', '.join(detector.prompt_names)}")

    source = open_source(args.video)
    sink = VideoSink(args.save, fps=source.fps or 30.0, overlay_fps=True) if args.save else ShowSink()
    with Pipeline(source, detector, sinks=[sink]) as pipeline:
        stats = pipeline.run()
    print(f"{stats['frames']} frames at {stats['fps']:.1f} FPS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="export a trained trex checkpoint (needs torch)")
    e.add_argument("--checkpoint", type=Path, default=None, help="a trex checkpoint (default: the embedded one)")
    e.add_argument("--out", default="artifacts")
    e.add_argument("--format", default="onnx", choices=["onnx", "openvino", "tensorrt"])
    e.add_argument("--imgsz", type=int, nargs="+", default=None, metavar="H [W]",
                   help="network input (default 256 448 for the embedded model, else 640)")
    e.add_argument("--dry-run", action="store_true", help="tensorrt: write only the plugin ONNX graphs (build on the device)")
    e.add_argument("--text-encoder", action="store_true", help="also export MiniLM: prompt with any text at run time")
    e.add_argument("--exist-ok", action="store_true", help="replace artifacts already in --out")
    r = sub.add_parser("run", help="prompt with boxes on an image, detect in a video (torch-free)")
    r.add_argument("--artifacts", required=True, help="folder written by the export step")
    r.add_argument("--openvino", action="store_true", help="use the .xml artifacts")
    r.add_argument("--tensorrt", action="store_true", help="use the .engine artifacts (device cuda)")
    r.add_argument("--image", help="the example image the boxes/points are drawn on")
    r.add_argument("--box", action="append", default=[], help="x0,y0,x1,y1 in image pixels (repeatable)")
    r.add_argument("--point", action="append", default=[], help="x,y in image pixels (repeatable)")
    r.add_argument("--name", default="object", help="the name the examples' detections get")
    r.add_argument("--text", action="append", default=[], help="also prompt with a text (bank name, or any text "
                   "when exported with --text-encoder)")
    r.add_argument("--video", default="0", help="video file or camera index")
    r.add_argument("--device", default="CPU")
    r.add_argument("--conf", type=float, default=None, help="minimum score (default: the detector manifest's threshold)")
    r.add_argument("--save", help="write an annotated video instead of showing a window")
    r.add_argument("--save-prompts", help="store the encoded prompts (.npz)")
    r.add_argument("--load-prompts", help="reuse prompts stored with --save-prompts")
    args = parser.parse_args()
    try:
        export(args) if args.command == "export" else run(args)
    except (OSError, ValueError) as e:  # bad input (an output over a model file, a cut prompt file): one line
        parser.exit(1, f"{parser.prog} {args.command}: error: {e}\n")


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, RuntimeError, ImportError) as e:  # bad input, a missing file or extra: one line
        raise SystemExit(f"{Path(__file__).name}: error: {e}") from None
