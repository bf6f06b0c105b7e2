"""Pipeline overhead and live latency on a real video.

    python benches/pipeline.py                         # toy ONNX model built in a temp dir
    python benches/pipeline.py --model model.onnx --device CPU --live-frames 150

Measures, in one run:
1. bare detector: `detector(frame)` over frames decoded beforehand (the ceiling);
2. file pipeline: Pipeline(video file, detector) with decoding, detection and sinks in threads
   (the ratio to 1. should be >= 0.9);
3. live latency: the video played at its own fps as a simulated camera through the pipeline:
   end-to-end latency (capture -> sinks done) p50/p95, frames processed and dropped.
Prints a table, and as the last line one JSON object with the same figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runtime import Detector, Pipeline, open_source  # noqa: E402
from runtime.capture import PacedVideoSource  # noqa: E402

DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "videos" / "car-detection.mp4"


def bare_fps(detector: Detector, frames: list, repeats: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeats):
        for f in frames:
            detector(f)
    return repeats * len(frames) / (time.perf_counter() - t0)


def pipeline_fps(detector: Detector, video: Path, max_frames: int) -> dict:
    source = open_source(str(video))
    pipe = Pipeline(source, detector, queue_size=4)
    n, t0 = 0, time.perf_counter()
    for _ in pipe:
        n += 1
        if n >= max_frames:
            break
    elapsed = time.perf_counter() - t0
    s = pipe.stats()
    return {"fps": n / elapsed, "frames": n, "detect_p50_ms": s["latency_ms"]["detect"]["p50"]}


def live_latency(detector: Detector, video: Path, max_frames: int) -> dict:
    source = PacedVideoSource(video)
    pipe = Pipeline(source, detector)
    for r in pipe:
        if r.frame.index >= max_frames - 1:
            break
    s = pipe.stats()
    e2e = s["latency_ms"]["end_to_end"]
    return {"camera_fps": source.fps, "frames": s["frames"], "dropped": s["dropped"], "fps": s["fps"],
            "latency_p50_ms": e2e["p50"], "latency_p95_ms": e2e["p95"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="artifact to run (default: a toy ONNX model, 640x640 input)")
    parser.add_argument("--video", default=str(DEFAULT_VIDEO))
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--threads", type=int, default=0, help="engine threads (0 = engine default)")
    parser.add_argument("--frames", type=int, default=0, help="frames for the throughput runs (0 = the whole video)")
    parser.add_argument("--repeats", type=int, default=1, help="passes over the frames for the bare detector")
    parser.add_argument("--live-frames", type=int, default=100, help="camera frames for the live-latency run")
    args = parser.parse_args()

    video = Path(args.video)
    if not video.is_file():
        print(f"video not found: {video}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from runtime.testing import make_blob_artifact  # needs the onnx package

            model = make_blob_artifact(tmp, "postprocessed", size_hw=(640, 640))
        options = {"threads": args.threads} if args.threads else {}
        detector = Detector(model, backend=args.backend, device=args.device, **options)
        frames = [f.image for f in open_source(str(video))]
        if args.frames:
            frames = frames[: args.frames]
        for f in frames[:5]:  # warm-up: first calls allocate
            detector(f)
        bare = bare_fps(detector, frames, args.repeats)
        piped = pipeline_fps(detector, video, len(frames))
        live = live_latency(detector, video, args.live_frames)
        detector.close()

    result = {
        "model": "toy-640" if args.model is None else Path(args.model).name, "backend": detector.backend_name,
        "device": args.device, "video": video.name, "frame_size": list(frames[0].shape[:2]), "frames": len(frames),
        "bare_detector_fps": round(bare, 2), "pipeline_fps": round(piped["fps"], 2),
        "pipeline_over_bare": round(piped["fps"] / bare, 3), "pipeline_detect_p50_ms": round(piped["detect_p50_ms"], 3),
        "live_camera_fps": live["camera_fps"], "live_frames_processed": live["frames"], "live_frames_dropped": live["dropped"],
        "live_fps": round(live["fps"], 2), "live_latency_p50_ms": round(live["latency_p50_ms"], 2),
        "live_latency_p95_ms": round(live["latency_p95_ms"], 2),
    }
    print(f"{'measure':<32}{'value':>14}")
    for key, value in result.items():
        print(f"{key:<32}{str(value):>14}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
