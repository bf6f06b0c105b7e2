"""Count vehicles crossing a line and standing in a zone, torch-free: detector -> ByteTrack -> counters.

    python examples/count_vehicles.py                                   # the shared road video, motion detector
    python examples/count_vehicles.py --model coco_dino.xml --classes 2 # your exported COCO detector (2 = car)

With `--model`, any exported artifact (or checkpoint) detects the vehicles. Without one, a
background-subtraction detector (OpenCV MOG2) stands in: the camera is fixed, so whatever moves
and is car-sized is a vehicle; the embedded demo detector knows shapes, not cars. Writes, under a
fresh runs/count_vehicles/N, the annotated video (ids, trails, line and zone counts), a contact
sheet PNG of the frames where a vehicle crossed, and counts.json; prints the counts.
"""
import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from runtime import contact_sheet, open_source
from runtime.models import load_model
from runtime.paths import next_run_dir
from runtime.commands.common import lower_score_floor
from runtime.track import ByteTracker, LineCounter, PolygonZone, Trails, draw_line, draw_tracks, draw_zone, tracker_config
from runtime.types import Detections

VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "car-detection.mp4"


class MotionDetector:
    """Moving, vehicle-sized blobs of a fixed camera as Detections of class 'vehicle'.

    MOG2 learns the empty road; foreground pixels (shadows excluded) are cleaned by morphology and
    grouped into contours; blobs smaller than `min_area` (a fraction of the frame) are noise. The
    score is the blob's fill ratio of its box, so ragged, partial blobs score lower.
    """

    class_names = ("vehicle",)

    def __init__(self, min_area: float = 0.02, warmup: int = 10):
        self.subtractor = cv2.createBackgroundSubtractorMOG2(history=300, varThreshold=32, detectShadows=True)
        self.kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
        self.min_area, self.warmup, self.frames = min_area, warmup, 0

    def __call__(self, frame: np.ndarray) -> Detections:
        self.frames += 1
        mask = self.subtractor.apply(frame)
        h, w = frame.shape[:2]
        if self.frames <= self.warmup:  # the model of the background is still forming
            return Detections.empty(self.class_names, (h, w))
        mask = (mask == 255).astype(np.uint8) * 255  # 127 = shadow
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self.kernel)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self.kernel, iterations=3)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        boxes, scores = [], []
        for c in contours:
            x, y, bw, bh = cv2.boundingRect(c)
            if bw * bh < self.min_area * h * w:
                continue
            boxes.append([x, y, x + bw, y + bh])
            scores.append(min(0.99, 0.4 + 0.6 * cv2.contourArea(c) / (bw * bh)))
        return Detections(np.array(boxes, np.float32).reshape(-1, 4), scores, [0] * len(scores), self.class_names, (h, w))

    def close(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(VIDEO), help="video file or camera index (default: the shared road video)")
    parser.add_argument("--model", default=None, help="exported detector (.onnx/.xml/.engine) or checkpoint; default: motion")
    parser.add_argument("--classes", type=int, nargs="+", default=None, help="with --model: class ids that are vehicles")
    parser.add_argument("--line", type=float, nargs=4, default=None, metavar=("X0", "Y0", "X1", "Y1"),
                        help="counting line in pixels (default: across the middle of the frame)")
    parser.add_argument("--project", default="runs", help="results go to PROJECT/count_vehicles/N")
    args = parser.parse_args()

    if args.source == str(VIDEO) and not VIDEO.is_file():
        raise FileNotFoundError(f"the default road video {VIDEO} is not here (it comes with the shared data); "
                                "pass --source VIDEO_FILE or a camera index")
    source = open_source(args.source)
    if args.model:  # the model's recommended threshold starts tracks, as in `edgedet track`
        detector = load_model(args.model, classes=args.classes)
        tracker = ByteTracker(tracker_config(detector.conf))
        lower_score_floor(detector, tracker.config.low_thresh)
    else:
        detector, tracker = MotionDetector(), ByteTracker()
    trails = Trails(length=40)
    out = next_run_dir(args.project, "count_vehicles")
    writer, line, zone, sheet = None, None, None, []
    for frame in source:
        image = frame.image
        h, w = image.shape[:2]
        if line is None:
            x0, y0, x1, y1 = args.line or (0, h / 2, w, h / 2)
            line = LineCounter((x0, y0), (x1, y1), anchor="center")
            zone = PolygonZone([(0, h * 0.7), (w - 1, h * 0.7), (w - 1, h - 1), (0, h - 1)], anchor="center")  # bottom band
            writer = cv2.VideoWriter(str(out / "counted.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), source.fps or 25.0, (w, h))
        tracked = tracker.update(detector(image))
        trails.update(tracked)
        went_in, went_out = line.update(tracked)
        zone.update(tracked)
        drawn = draw_line(draw_zone(draw_tracks(image, tracked, trails), zone), line)
        writer.write(drawn)
        if went_in or went_out:
            sheet.append(drawn)
    source.close()
    detector.close()
    if writer is None:
        raise SystemExit(f"{args.source} gave no frames")
    writer.release()
    counts = {"in": line.in_count, "out": line.out_count, "total": line.in_count + line.out_count,
              "entered_zone": zone.total_count, "tracks": tracker._next_id - 1}
    (out / "counts.json").write_text(json.dumps(counts, indent=2))
    if sheet:
        cv2.imwrite(str(out / "crossings.png"), contact_sheet(sheet, cols=min(4, len(sheet))))
    print(f"line: {counts['in']} in (downwards), {counts['out']} out, {counts['total']} vehicles; "
          f"{counts['entered_zone']} entered the zone; results in {out}")


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, RuntimeError, ImportError) as e:  # bad input, a missing file or extra: one line
        raise SystemExit(f"{Path(__file__).name}: error: {e}") from None
