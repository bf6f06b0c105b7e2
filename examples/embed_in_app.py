"""Embed the detector in an application: a callback counts objects per class on every frame.

    python examples/embed_in_app.py --model runs/demo/model/demo_detector.xml --source runs/demo/shapes.mp4

(`edgedet demo` writes that model and video; any exported artifact and any video file or camera index work.)

The pipeline runs capture, inference and the callback in their own threads; the application
only reads the running totals.
"""
import argparse
from pathlib import Path
import threading
from collections import Counter

from runtime import CallbackSink, Detector, Pipeline


class ObjectCounter:
    """Thread-safe running totals: objects per class, and the most seen in one frame."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total = Counter()
        self.peak = Counter()

    def __call__(self, frame_bgr, detections) -> None:
        counts = Counter(detections.names)
        with self.lock:
            self.total.update(counts)
            for name, n in counts.items():
                self.peak[name] = max(self.peak[name], n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--source", default="0", help="camera index, video, folder or URL")
    parser.add_argument("--conf", type=float, default=None, help="minimum score (default: the manifest's recommended one)")
    args = parser.parse_args()

    counter = ObjectCounter()
    detector = Detector(args.model, conf=args.conf)
    source = int(args.source) if args.source.isdigit() else args.source
    stats = Pipeline(source, detector, sinks=[CallbackSink(counter, pass_result=False)]).run()
    print(f"{stats['frames']} frames, {stats['fps']:.1f} FPS")
    for name, n in counter.total.most_common():
        print(f"{name:>16}: {n} detections, at most {counter.peak[name]} in one frame")


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, RuntimeError, ImportError) as e:  # bad input, a missing file or extra: one line
        raise SystemExit(f"{Path(__file__).name}: error: {e}") from None
