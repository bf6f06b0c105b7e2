"""Detect on a USB camera (or a video file) and show the boxes live.

    python examples/camera_demo.py --model model.onnx                 # camera 0
    python examples/camera_demo.py --model model.onnx --source clip.mp4
    python examples/camera_demo.py --model model.onnx --save out.mp4  # headless: write a video instead

Press q or Esc in the window to quit.
"""
import argparse
from pathlib import Path

from runtime import Detector, Pipeline, ShowSink, VideoSink, open_source
from runtime.safety import refuse_output_over_input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="exported artifact (.onnx / .xml / .engine)")
    parser.add_argument("--source", default="0", help="camera index or video file")
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--conf", type=float, default=None, help="minimum score (default: the manifest's recommended one)")
    parser.add_argument("--save", default=None, help="write an annotated video instead of showing a window")
    args = parser.parse_args()
    try:  # never over the model's own files (sidecar, .bin, custom-op library) or the input, even through links
        refuse_output_over_input([args.save], [args.model, args.source], what="--save")
    except ValueError as e:
        parser.error(str(e))

    detector = Detector(args.model, device=args.device, conf=args.conf)
    source = open_source(args.source)
    sink = VideoSink(args.save, fps=source.fps or 30.0, overlay_fps=True) if args.save else ShowSink()
    with Pipeline(source, detector, sinks=[sink]) as pipeline:
        stats = pipeline.run()
    print(f"{stats['frames']} frames at {stats['fps']:.1f} FPS, "
          f"latency p50 {stats['latency_ms']['end_to_end']['p50']:.1f} ms, dropped {stats['dropped']}")


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, RuntimeError, ImportError) as e:  # bad input, a missing file or extra: one line
        raise SystemExit(f"{Path(__file__).name}: error: {e}") from None
