"""Many streams, one engine: N independent single-stream pipelines versus one batched pipeline.

    python benches/multistream.py                        # 1, 2, 4, 8 streams; OpenVINO fused + ONNX Runtime
    python benches/multistream.py --streams 4 --seconds 5 --backends openvino

The embedded demo detector is exported once with a dynamic batch (OpenVINO with the fused
MSDA op when the extension is built, ONNX Runtime with the grid_sample form). Each stream
loops frames decoded from the two shared videos (../shared/data/videos), offset per stream,
kept in memory so the figures measure the engine side rather than the video decoder. Every
configuration runs for `--seconds`; for each stream count the two modes are timed
interleaved (independent, batched, independent, batched, ...) so machine load hits both alike.

independent: N `Pipeline`s, each with its own `Detector` (what N copies of a one-camera app do).
batched:     one `MultiStreamPipeline` with one `Detector`: a frame of every stream per engine call.
Reports total frames/s, per-stream end-to-end latency p50 (mean over streams) and p95 (worst
stream), the throughput ratio batched / independent, and the batched p95 against the
single-stream p95. Prints a table and, as its last line, one JSON object with the same figures.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runtime import Detector, MultiStreamPipeline, Pipeline  # noqa: E402
from runtime.capture import LiveIteratorSource, SequentialSource  # noqa: E402

VIDEOS = REPO.parent / "shared" / "data" / "videos"
CHECKPOINT = REPO / "edgedet" / "assets" / "demo_detector.pth"


def load_frames(per_video: int, size_wh=(640, 360)) -> List[np.ndarray]:
    """`per_video` frames of each shared video, resized to one camera resolution, in memory."""
    videos = sorted(VIDEOS.glob("*.mp4"))
    if not videos:
        raise FileNotFoundError(f"no videos in {VIDEOS}; this bench needs ../shared/data/videos")
    frames: List[np.ndarray] = []
    for path in videos:
        cap = cv2.VideoCapture(str(path))
        for _ in range(per_video):
            ok, image = cap.read()
            if not ok:
                break
            frames.append(cv2.resize(image, size_wh, interpolation=cv2.INTER_AREA))
        cap.release()
    return frames


def looping_source(name: str, frames: Sequence[np.ndarray], offset: int, fps: float = 0.0):
    """An endless stream starting `offset` frames in: file-like (every frame processed, as fast as the
    engine goes) when fps is 0, else a live camera at `fps` (newest frame only, stale ones dropped)."""
    n = len(frames)
    if not fps:
        return SequentialSource(name, (frames[(offset + i) % n] for i in itertools.count()))

    def camera():
        t0 = time.perf_counter()
        for i in itertools.count():
            time.sleep(max(0.0, t0 + i / fps - time.perf_counter()))
            yield frames[(offset + i) % n]

    return LiveIteratorSource(camera(), name=name, fps=fps)


def export_artifacts(backends: Sequence[str], out_dir: Path, imgsz) -> Dict[str, Path]:
    from converters.api import export
    from converters.openvino.convert import fused_extension_available

    paths: Dict[str, Path] = {}
    for backend in backends:
        if backend == "openvino":
            form = "fused" if fused_extension_available() else "grid_sample"
            target = out_dir / f"demo-dyn-{form}.xml"
            fmt = "openvino"
        else:
            form, fmt, target = "grid_sample", "onnx", out_dir / "demo-dyn-grid_sample.onnx"
        if not target.is_file():
            export(str(CHECKPOINT), format=fmt, output=target, imgsz=imgsz, msda=form, dynamic_batch=True)
        paths[f"{backend}/{form}"] = target
    return paths


def _latency(stats_list: List[dict]) -> tuple:
    p50 = [s["p50"] for s in stats_list if s]
    p95 = [s["p95"] for s in stats_list if s]
    return (float(np.mean(p50)) if p50 else 0.0, float(max(p95)) if p95 else 0.0)


def run_independent(artifact: Path, frames, n: int, seconds: float, threads: int, fps: float = 0.0) -> dict:
    options = {"threads": threads} if threads else {}
    detectors = [Detector(artifact, **options) for _ in range(n)]
    pipes = [Pipeline(looping_source(f"s{i}", frames, i * len(frames) // max(1, n), fps), d, queue_size=2)
             for i, d in enumerate(detectors)]
    for p in pipes:
        p.start()
    time.sleep(seconds)
    for p in pipes:
        p.close()
    stats = [p.stats() for p in pipes]
    for d in detectors:
        d.close()
    frames_done = sum(s["frames"] for s in stats)
    elapsed = max(s["elapsed_s"] for s in stats)
    p50, p95 = _latency([s["latency_ms"].get("end_to_end", {}) for s in stats])
    return {"fps": frames_done / elapsed if elapsed else 0.0, "p50_ms": p50, "p95_ms": p95}


def run_batched(artifact: Path, frames, n: int, seconds: float, threads: int, max_wait_ms: float, fps: float = 0.0,
                max_batch: int = 0) -> dict:
    options = {"threads": threads} if threads else {}
    with Detector(artifact, **options) as det:
        sources = {f"s{i}": looping_source(f"s{i}", frames, i * len(frames) // max(1, n), fps) for i in range(n)}
        stats = MultiStreamPipeline(sources, det, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                    queue_size=2 * n).run(duration_s=seconds)
    p50, p95 = _latency([s["latency_ms"] for s in stats["streams"].values()])
    return {"fps": stats["fps"], "p50_ms": p50, "p95_ms": p95, "batch_mean": stats["batch_mean"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--seconds", type=float, default=8.0, help="per configuration and repeat")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats per configuration (median kept)")
    ap.add_argument("--backends", nargs="+", default=["openvino", "onnxruntime"], choices=["openvino", "onnxruntime"])
    ap.add_argument("--imgsz", type=int, nargs=2, default=[256, 256], metavar=("H", "W"),
                    help="export size (default 256 256, the demo detector's training size)")
    ap.add_argument("--threads", type=int, default=0, help="engine threads per Detector (0 = engine default)")
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--max-batch", type=int, default=0, help="frames per engine call (0 = one per stream)")
    ap.add_argument("--frames-per-video", type=int, default=90)
    ap.add_argument("--fps", type=float, default=0.0,
                    help="0: file streams, every frame, as fast as the engine goes (throughput); N: live cameras "
                         "at N frames/s each, newest frame only (latency at a real camera rate)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_multistream"))
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frames = load_frames(args.frames_per_video)
    artifacts = export_artifacts(args.backends, out, tuple(args.imgsz))
    rows = []
    for engine, artifact in artifacts.items():
        single_p95 = None
        for n in args.streams:
            runs: Dict[str, List[dict]] = {"independent": [], "batched": []}
            for _ in range(args.repeats):  # interleaved: load changes hit both modes
                runs["independent"].append(run_independent(artifact, frames, n, args.seconds, args.threads, args.fps))
                runs["batched"].append(run_batched(artifact, frames, n, args.seconds, args.threads, args.max_wait_ms, args.fps,
                                                   args.max_batch))
            med = {mode: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for mode, rs in runs.items()}
            if n == 1:
                single_p95 = med["independent"]["p95_ms"]
            row = {"engine": engine, "streams": n,
                   "independent_fps": med["independent"]["fps"], "batched_fps": med["batched"]["fps"],
                   "throughput_ratio": med["batched"]["fps"] / med["independent"]["fps"] if med["independent"]["fps"] else 0.0,
                   "independent_p50_ms": med["independent"]["p50_ms"], "independent_p95_ms": med["independent"]["p95_ms"],
                   "batched_p50_ms": med["batched"]["p50_ms"], "batched_p95_ms": med["batched"]["p95_ms"],
                   "batch_mean": med["batched"]["batch_mean"],
                   "batched_p95_vs_single_p95": med["batched"]["p95_ms"] / single_p95 if single_p95 else None}
            rows.append(row)
            print(f"{engine:<22} {n} streams: independent {row['independent_fps']:.1f} FPS, batched {row['batched_fps']:.1f} FPS "
                  f"({row['throughput_ratio']:.2f}x)", file=sys.stderr, flush=True)

    header = (f"{'engine':<22}{'streams':>8}{'indep FPS':>11}{'batch FPS':>11}{'ratio':>7}"
              f"{'indep p50/p95 ms':>19}{'batch p50/p95 ms':>19}{'mean batch':>11}{'p95/single':>11}")
    print(header)
    for r in rows:
        rel = r["batched_p95_vs_single_p95"]
        print(f"{r['engine']:<22}{r['streams']:>8}{r['independent_fps']:>11.1f}{r['batched_fps']:>11.1f}{r['throughput_ratio']:>7.2f}"
              f"{r['independent_p50_ms']:>9.1f}/{r['independent_p95_ms']:<9.1f}{r['batched_p50_ms']:>9.1f}/{r['batched_p95_ms']:<9.1f}"
              f"{r['batch_mean']:>11.2f}{(rel or 0.0):>11.2f}")
    print(json.dumps({"bench": "multistream", "fps_per_stream": args.fps, "max_batch": args.max_batch, "seconds": args.seconds, "repeats": args.repeats, "imgsz": args.imgsz,
                      "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
