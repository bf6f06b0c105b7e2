"""Convert a trained checkpoint with `converters.export`, then run it with the torch-free runtime.

    python examples/convert_and_run.py --checkpoint runs/dino/last.pth --image street.jpg
    python examples/convert_and_run.py --checkpoint last.pth --format openvino --image street.jpg

The input size is the one `edgedet export` picks from the checkpoint (its training scale; --imgsz H W
overrides). The artifact and the annotated image go to a fresh runs/convert_and_run/N (--out-dir to choose).
Export needs the conversion extra (pip install 'edgedet[convert]'); the second half needs only
`runtime` and could run on another machine with the exported file (and its .edgedet.json).
"""
import argparse
from pathlib import Path

import cv2

from converters import export
from runtime import Detector, draw
from runtime.paths import next_run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="edgedet checkpoint (.pth)")
    parser.add_argument("--image", required=True, help="an image to detect on")
    parser.add_argument("--format", default="onnx", choices=["onnx", "openvino", "tensorrt"])
    parser.add_argument("--imgsz", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="network input (default: the size `edgedet export` picks for the checkpoint, printed)")
    parser.add_argument("--msda", default="gather", help="deformable attention form: fused, gather or grid_sample")
    parser.add_argument("--out-dir", default=None, help="where the artifact and the picture go (default: a fresh runs/convert_and_run/N)")
    args = parser.parse_args()

    image = cv2.imread(args.image) if Path(args.image).is_file() else None  # before the export: fails at once
    if image is None:
        raise FileNotFoundError(f"cannot read image {args.image}: missing or not an image")
    out_dir = Path(args.out_dir) if args.out_dir else next_run_dir("runs", "convert_and_run")
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = {"onnx": ".onnx", "openvino": ".xml", "tensorrt": ".engine"}[args.format]
    output = out_dir / (Path(args.checkpoint).stem + suffix)
    artifact = export(args.checkpoint, format=args.format, output=output, precision="fp32",
                      imgsz=tuple(args.imgsz) if args.imgsz else None, msda=args.msda, postprocess=True,
                      overwrite=True)  # re-running the example replaces its own export
    print(f"exported {artifact}")

    detector = Detector(artifact, device="cuda" if args.format == "tensorrt" else "CPU")
    print(detector.defaults_note)
    detections = detector(image)
    for box, name, score in zip(detections.boxes_xyxy, detections.names, detections.scores):
        print(f"{name:>12} {score:.2f} at {[round(float(v)) for v in box]}")
    print("timings (ms):", {k: round(v, 1) for k, v in detections.timings_ms.items()})
    out = out_dir / ("detections_" + Path(args.image).name)
    cv2.imwrite(str(out), draw(image, detections))
    print(f"wrote {out}")


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, RuntimeError, ImportError) as e:  # bad input, a missing file or extra: one line
        raise SystemExit(f"{Path(__file__).name}: error: {e}") from None
