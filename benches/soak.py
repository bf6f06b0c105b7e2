"""Soak test: the runtime pipeline on a looping video for a long time, watching memory and latency.

    python benches/soak.py                       # 30 minutes, embedded demo detector (OpenVINO)
    python benches/soak.py --minutes 5 --format onnx
    python benches/soak.py --video clip.mp4 --model model.xml

The video is decoded again on every loop (the source is reopened at its end, as a reconnecting
camera would be), each result is drawn and written as a JSON line (to /dev/null), so capture,
preprocess, inference, postprocess, drawing and the sinks all run for the whole time.

Targets (issue #12): resident memory grows < 2% after the first minute (warm-up excluded), and
the per-frame latency p95 (the detector's preprocess + inference + postprocess) of the last 5
minutes is within 10% of the first 5 minutes; end-to-end latency (queueing included) is shown too.
Runs shorter than 15 minutes compare windows of a third of the run instead (said in the table).
Prints a table; the last line is one JSON object with the same figures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benches"))

from _machine import cpu_model, load_summary  # noqa: E402
from _samples import SampleLog  # noqa: E402

from runtime import CallbackSink, Detector, JsonLinesSink, Pipeline, draw, open_source  # noqa: E402

RSS_TARGET_PCT, P95_TARGET_PCT = 2.0, 10.0


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def looping_frames(video: Path) -> Iterator[np.ndarray]:
    """Every frame of `video`, then again from the start, forever (reopened each loop)."""
    while True:
        n = 0
        with open_source(str(video)) as source:
            for frame in source:
                n += 1
                yield frame.image
        if n == 0:
            raise RuntimeError(f"{video} yielded no frames")


def demo_artifact(work: Path, fmt: str) -> Tuple[Path, Path]:
    """The embedded demo detector exported to `fmt`, and the demo's moving-shapes video."""
    from converters.demo import DEMO_CHECKPOINT, export_demo_model
    from converters.demo_video import render_demo_video

    artifact = export_demo_model(DEMO_CHECKPOINT, work, fmt)
    video = work / "shapes.mp4"
    if not video.is_file():  # rendered once per work dir (fixed seed): never rewritten under a reader of it
        video, _ = render_demo_video(work, 150)
    return artifact, video


def soak(detector: Detector, video: Path, minutes: float, rss_every_s: float = 5.0, progress: bool = True) -> dict:
    duration = minutes * 60.0
    # per frame: seconds since start, detector ms (preprocess + inference + postprocess), capture -> sinks ms
    # (queueing included); preallocated so that the bench's own bookkeeping does not show as RSS growth
    frames = SampleLog.for_run(("t_s", "detector_ms", "e2e_ms"), duration + 60.0)
    rss: List[Tuple[float, float]] = []
    load: List[float] = []  # the machine's 1-minute load average, sampled with the RSS
    t0 = time.perf_counter()
    state = {"next_rss": 0.0, "next_print": 0.0}

    def record(result) -> None:
        now = time.perf_counter() - t0
        frames.append(now, float(sum(result.detections.timings_ms.values())), result.latency_ms)
        draw(result.frame.image, result.detections)  # a copy is drawn, as the video/show sinks do
        if now >= state["next_rss"]:
            rss.append((now, rss_mb()))
            load.append(os.getloadavg()[0])
            state["next_rss"] = now + rss_every_s
        if progress and now >= state["next_print"]:
            state["next_print"] = now + 10.0
            print(f"\r{now / 60:5.1f}/{minutes:.1f} min | {frames.seen} frames | RSS {rss[-1][1]:.1f} MiB | "
                  f"last latency {result.latency_ms:.1f} ms   ", end="", file=sys.stderr, flush=True)

    sinks = [CallbackSink(record), JsonLinesSink(os.devnull)]
    pipeline = Pipeline(open_source(looping_frames(video)), detector, sinks=sinks, queue_size=4)
    for _ in pipeline:
        if time.perf_counter() - t0 >= duration:
            break
    pipeline.close()
    if progress:
        print(file=sys.stderr)
    elapsed = time.perf_counter() - t0
    rss.append((elapsed, rss_mb()))

    warm = min(60.0, elapsed / 5)  # memory baseline after the first minute (a fifth of a short run)
    base = next((mb for t, mb in rss if t >= warm), rss[-1][1])
    after = [mb for t, mb in rss if t >= warm]
    window = 300.0 if elapsed >= 900.0 else elapsed / 3
    first, last = frames.window_p95("detector_ms", 0.0, window), frames.window_p95("detector_ms", elapsed - window, elapsed + 1)
    e2e_first, e2e_last = frames.window_p95("e2e_ms", 0.0, window), frames.window_p95("e2e_ms", elapsed - window, elapsed + 1)
    growth = 100.0 * (rss[-1][1] - base) / base
    drift = 100.0 * (last - first) / first
    return {
        "minutes": round(elapsed / 60, 2), "frames": frames.seen, "fps": round(frames.seen / elapsed, 2),
        "samples_thinned": frames.thinned,
        "rss_baseline_mb": round(base, 1), "rss_final_mb": round(rss[-1][1], 1), "rss_max_after_warmup_mb": round(max(after), 1),
        "rss_growth_pct": round(growth, 2), "rss_baseline_at_s": round(warm, 1),
        "window_s": round(window, 1), "p95_first_ms": round(first, 2), "p95_last_ms": round(last, 2),
        "p95_drift_pct": round(drift, 2), "p50_ms": round(float(np.median(frames.column("detector_ms"))), 2),
        "e2e_p95_first_ms": round(e2e_first, 2), "e2e_p95_last_ms": round(e2e_last, 2),
        "rss_ok": growth < RSS_TARGET_PCT, "latency_ok": abs(drift) <= P95_TARGET_PCT,
        "dropped": pipeline.stats()["dropped"], **load_summary(load),
    }


def format_table(r: dict) -> str:
    rows = [
        ("duration", f"{r['minutes']} min, {r['frames']} frames, {r['fps']} FPS, dropped {r['dropped']}"),
        ("RSS", f"{r['rss_baseline_mb']} MiB at {r['rss_baseline_at_s']} s -> {r['rss_final_mb']} MiB at the end "
                f"(max {r['rss_max_after_warmup_mb']}): {r['rss_growth_pct']:+.2f}% "
                f"[target < {RSS_TARGET_PCT}%: {'ok' if r['rss_ok'] else 'FAIL'}]"),
        ("latency p95", f"first {r['window_s']:.0f} s {r['p95_first_ms']} ms, last {r['window_s']:.0f} s {r['p95_last_ms']} ms: "
                        f"{r['p95_drift_pct']:+.2f}% [target within {P95_TARGET_PCT}%: {'ok' if r['latency_ok'] else 'FAIL'}]"),
        ("latency p50", f"{r['p50_ms']} ms over the run (detector: preprocess + inference + postprocess per frame)"),
        ("end-to-end", f"p95 first {r['e2e_p95_first_ms']} ms, last {r['e2e_p95_last_ms']} ms (capture -> sinks, "
                       "includes waiting in the queues: a file source runs ahead of the detector)"),
    ]
    if "load_mean" in r:
        rows.append(("machine", f"{r.get('cpu', '?')} [{r.get('cpu_flags', '')}], {r.get('cpus', '?')} CPUs; load average "
                                f"{r['load_start']} at the start, mean {r['load_mean']}, max {r['load_max']} "
                                "(figures from a loaded machine are not an idle one's)"))
    return "\n".join(f"{k:<12} {v}" for k, v in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    p.add_argument("--model", default=None, help="artifact to run (default: the embedded demo detector, exported)")
    p.add_argument("--format", default="openvino", help="export format of the demo detector (openvino or onnx)")
    p.add_argument("--video", default=None, help="video to loop (default: the demo's rendered moving-shapes video)")
    p.add_argument("--threads", type=int, default=1, help="engine CPU threads (default 1)")
    p.add_argument("--work-dir", default=None, help="where the demo artifact and video are cached (default: a temp dir)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error("--minutes must be positive")
    with tempfile.TemporaryDirectory(prefix="edgedet-soak-") as tmp:
        work = Path(args.work_dir or tmp)
        artifact, video = (Path(args.model), None) if args.model else demo_artifact(work, args.format)
        video = Path(args.video) if args.video else video
        if video is None:
            p.error("--model needs --video (the demo video is rendered only with the demo detector)")
        detector = Detector(artifact, conf=0.2, threads=args.threads)
        print(f"soak: {detector} on {video.name} (looping) for {args.minutes} min", file=sys.stderr)
        result = soak(detector, video, args.minutes, progress=not args.no_progress)
        detector.close()
    result.update({"model": str(artifact.name), "video": str(video.name), "threads": args.threads, **cpu_model()})
    print(format_table(result))
    print(json.dumps(result))
    return 0 if result["rss_ok"] and result["latency_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
