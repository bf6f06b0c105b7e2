"""Detect on a Jetson CSI camera (Raspberry Pi v2 / IMX219 style) through GStreamer.

    python examples/jetson_csi.py --model model.engine --width 1280 --height 720 --fps 30

Needs JetPack's OpenCV, which is built with GStreamer (pip's opencv wheels are not): create the
virtualenv with --system-site-packages so `import cv2` finds it.
"""
import argparse
from pathlib import Path

from runtime import Detector, JsonLinesSink, Pipeline, ShowSink, jetson_csi_pipeline, open_source
from runtime.safety import refuse_output_over_input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="artifact: .engine (TensorRT), .onnx or .xml")
    parser.add_argument("--sensor-id", type=int, default=0)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--flip", type=int, default=0, help="nvvidconv flip-method (2 = upside down)")
    parser.add_argument("--device", default="cuda", help="cuda for .onnx/.engine on the Jetson GPU, CPU otherwise")
    parser.add_argument("--json", default=None, help="log detections as JSON lines instead of showing a window")
    args = parser.parse_args()
    try:  # never over the model's own files (sidecar, .bin, custom-op library) or the input, even through links
        refuse_output_over_input([args.json], [args.model], what="--json")
    except ValueError as e:
        parser.error(str(e))

    gst = jetson_csi_pipeline(sensor_id=args.sensor_id, width=args.width, height=args.height, fps=args.fps, flip=args.flip)
    detector = Detector(args.model, device=args.device)
    sink = JsonLinesSink(args.json) if args.json else ShowSink("CSI camera")
    # A live source: the newest frame is always the one detected, stale ones are dropped.
    with Pipeline(open_source(gst), detector, sinks=[sink]) as pipeline:
        for result in pipeline:
            if result.frame.index % 100 == 0:
                s = pipeline.stats()
                print(f"frame {result.frame.index}: {s['fps']:.1f} FPS, {result.latency_ms:.1f} ms, dropped {s['dropped']}")


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, RuntimeError, ImportError) as e:  # bad input, a missing file or extra: one line
        raise SystemExit(f"{Path(__file__).name}: error: {e}") from None
