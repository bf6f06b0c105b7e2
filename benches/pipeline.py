"""Pipeline overhead and live latency on a real video.

    python benches/pipeline.py                         # toy ONNX model built in a temp dir
    python benches/pipeline.py --model model.onnx --device CPU --live-frames 150

Measures, in one run:
1. sequential loop: read a frame, detect, repeat, on one thread (what an app without the pipeline does);
2. bare detector: frames / time spent inside `detector()` in that loop (the ceiling for one detect thread);
3. file pipeline: Pipeline(video file, detector), decoding and detection in their own threads
   (aim: >= 0.9x of 2.; decoding shares the CPU, so a cheap model on few busy cores falls short),
   and the same with frames from memory (no decoding: the threading overhead alone);
4. live latency: the video played at its own fps as a simulated camera through the pipeline:
   end-to-end latency (capture -> sinks done) p50/p95, frames processed and dropped.
Prints a table, and as the last line one JSON object with the same figures.
"""
from __future__ import annotations

import argparse
import itertools
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


def sequential_fps(detector: Detector, video: Path, max_frames: int) -> tuple:
    """What an app without the pipeline does: read a frame, detect, repeat, on one thread.

    Returns (loop fps, bare detector fps = frames / time spent inside detector() alone).
    """
    n, in_detector, t0 = 0, 0.0, time.perf_counter()
    with open_source(str(video)) as source:
        for frame in source:
            t = time.perf_counter()
            detector(frame.image)
            in_detector += time.perf_counter() - t
            n += 1
            if n >= max_frames:
                break
    return n / (time.perf_counter() - t0), n / in_detector


def pipeline_fps(detector: Detector, video, max_frames: int) -> dict:
    """video: a path (decoded in the capture thread) or an iterable of frames already in memory."""
    source = open_source(str(video) if isinstance(video, Path) else video)
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
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the throughput runs; medians are reported")
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
        with open_source(str(video)) as source:
            frames, total = [], 0
            for f in source:
                total += 1
                if len(frames) < 5:
                    frames.append(f.image)
        count = min(total, args.frames or total)
        for f in frames[:5]:  # warm-up: first calls allocate
            detector(f)
        runs = {"bare": [], "sequential": [], "pipeline": [], "detect_ms": [], "memory": []}
        for _ in range(max(1, args.rounds)):  # alternate, so a noisy neighbour hits both alike
            loop, bare = sequential_fps(detector, video, count)
            runs["sequential"].append(loop)
            runs["bare"].append(bare)
            piped = pipeline_fps(detector, video, count)
            runs["pipeline"].append(piped["fps"])
            runs["detect_ms"].append(piped["detect_p50_ms"])
            # The pipeline's own overhead: frames from memory, no decoding competing for the CPU.
            runs["memory"].append(pipeline_fps(detector, itertools.islice(itertools.cycle(frames), count), count)["fps"])
        bare, sequential = float(np.median(runs["bare"])), float(np.median(runs["sequential"]))
        piped = {"fps": float(np.median(runs["pipeline"])), "detect_p50_ms": float(np.median(runs["detect_ms"]))}
        live = live_latency(detector, video, args.live_frames)
        detector.close()

    result = {
        "model": "toy-640" if args.model is None else Path(args.model).name, "backend": detector.backend_name,
        "device": args.device, "video": video.name, "frame_size": list(frames[0].shape[:2]), "frames": count, "rounds": max(1, args.rounds),
        "bare_detector_fps": round(bare, 2), "sequential_loop_fps": round(sequential, 2), "pipeline_fps": round(piped["fps"], 2),
        "pipeline_over_bare": round(piped["fps"] / bare, 3),
        "pipeline_from_memory_fps": round(float(np.median(runs["memory"])), 2),
        "pipeline_from_memory_over_bare": round(float(np.median(runs["memory"])) / bare, 3), "pipeline_over_sequential": round(piped["fps"] / sequential, 3), "pipeline_detect_p50_ms": round(piped["detect_p50_ms"], 3),
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
