"""Convert a trained checkpoint with `converters.export`, then run it with the torch-free runtime.

    python examples/convert_and_run.py --checkpoint runs/dino/last.pth --image street.jpg
    python examples/convert_and_run.py --checkpoint last.pth --format openvino --image street.jpg

Export needs the conversion extra (pip install 'edgedet[convert]'); the second half needs only
`runtime` and could run on another machine with the exported file (and its .edgedet.json).
"""
import argparse
from pathlib import Path

import cv2

from converters import export
from runtime import Detector, draw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="edgedet checkpoint (.pth)")
    parser.add_argument("--image", required=True, help="an image to detect on")
    parser.add_argument("--format", default="onnx", choices=["onnx", "openvino", "tensorrt"])
    parser.add_argument("--imgsz", type=int, nargs=2, default=[640, 640], metavar=("H", "W"))
    parser.add_argument("--msda", default="gather", help="deformable attention form: fused, gather or grid_sample")
    parser.add_argument("--out-dir", default="exported")
    args = parser.parse_args()

    suffix = {"onnx": ".onnx", "openvino": ".xml", "tensorrt": ".engine"}[args.format]
    output = Path(args.out_dir) / (Path(args.checkpoint).stem + suffix)
    output.parent.mkdir(parents=True, exist_ok=True)
    artifact = export(args.checkpoint, format=args.format, output=output, precision="fp32",
                      imgsz=tuple(args.imgsz), msda=args.msda, postprocess=True,
                      overwrite=True)  # re-running the example replaces its own export
    print(f"exported {artifact}")

    detector = Detector(artifact, device="cuda" if args.format == "tensorrt" else "CPU")
    image = cv2.imread(args.image)
    if image is None:
        raise SystemExit(f"cannot read image {args.image}")
    detections = detector(image)
    for box, name, score in zip(detections.boxes_xyxy, detections.names, detections.scores):
        print(f"{name:>12} {score:.2f} at {[round(float(v)) for v in box]}")
    print("timings (ms):", {k: round(v, 1) for k, v in detections.timings_ms.items()})
    out = Path(args.out_dir) / ("detections_" + Path(args.image).name)
    cv2.imwrite(str(out), draw(image, detections))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
