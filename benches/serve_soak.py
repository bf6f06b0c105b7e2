"""Soak of the live web view: streaming to a browser that disconnects and reconnects every minute.

    python benches/serve_soak.py                   # 10 minutes, reconnect every 60 s
    python benches/serve_soak.py --minutes 3 --reconnect-every 30

The embedded demo detector (exported once, OpenVINO) runs on the rendered demo video played
live in a loop, through the threaded pipeline with the `LiveServer` sink. A headless Chromium
(Debian's chromium + chromium-driver via selenium) opens the page, watches for
`--reconnect-every` seconds, leaves (about:blank), and comes back. Every `--sample-every`
seconds the bench records this process's resident memory (the device side: pipeline + server)
and the end-to-end latency of the frames since the last sample.

Reports: RSS growth from the end of the first minute to the end (target < 5%), latency p95 of
the first and of the last minute (no drift), frames, dropped, reconnects. Prints a table and,
as its last line, one JSON object with the same figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # browser_helpers: the same headless Chromium the tests drive


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--reconnect-every", type=float, default=60.0, help="seconds a browser visit lasts")
    ap.add_argument("--sample-every", type=float, default=5.0)
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_serve_soak"))
    args = ap.parse_args()

    from browser_helpers import chromium_driver
    from converters.demo import DEMO_CHECKPOINT, export_demo_model
    from converters.demo_video import render_demo_video
    from runtime import Detector, Pipeline
    from runtime.capture import PacedVideoSource
    from runtime.serve import LiveServer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    artifact = export_demo_model(DEMO_CHECKPOINT, out, "openvino")
    video, _ = render_demo_video(out, 150)
    detector = Detector(artifact, threads=1)
    server = LiveServer(port=0).start()
    window = []  # latency (capture -> detections) of the frames since the last sample
    pipe = Pipeline(PacedVideoSource(video, loop=True), detector, sinks=[server, lambda r: window.append(r.latency_ms)])
    server.stats_fn = pipe.stats
    driver = chromium_driver()
    samples, visits = [], 0
    t0 = time.perf_counter()
    next_visit = t0
    pipe.start()
    try:
        while time.perf_counter() - t0 < args.minutes * 60:
            now = time.perf_counter()
            if now >= next_visit:
                if visits:
                    driver.get("about:blank")  # the browser leaves: the server must drop the stream
                    time.sleep(0.5)
                driver.get(server.url)
                visits += 1
                next_visit = now + args.reconnect_every
            time.sleep(args.sample_every)
            recent, window[:] = list(window), []
            stats = pipe.stats()
            samples.append({"t_s": time.perf_counter() - t0, "rss_mb": rss_mb(), "frames": stats["frames"],
                            "dropped": stats["dropped"], "clients": server.clients,
                            "p95_ms": float(np.percentile(recent, 95)) if recent else None})
            print(f"\r{samples[-1]['t_s']:6.0f} s  RSS {samples[-1]['rss_mb']:7.1f} MB  frames {stats['frames']}  "
                  f"p95 {samples[-1]['p95_ms'] or 0:6.1f} ms  viewers {server.clients}   ", end="", file=sys.stderr, flush=True)
    finally:
        driver.quit()
        pipe.close()
        detector.close()
    print(file=sys.stderr)

    after_first = [s for s in samples if s["t_s"] >= 60.0] or samples
    rss_start, rss_end = after_first[0]["rss_mb"], samples[-1]["rss_mb"]
    first = [s["p95_ms"] for s in samples if s["t_s"] <= 60.0 and s["p95_ms"] is not None]
    last = [s["p95_ms"] for s in samples if s["t_s"] >= samples[-1]["t_s"] - 60.0 and s["p95_ms"] is not None]
    result = {
        "bench": "serve_soak", "minutes": args.minutes, "visits": visits, "frames": samples[-1]["frames"],
        "dropped": samples[-1]["dropped"], "rss_after_first_minute_mb": rss_start, "rss_end_mb": rss_end,
        "rss_growth_pct": 100.0 * (rss_end - rss_start) / rss_start if rss_start else None,
        "latency_p95_first_minute_ms": float(np.median(first)) if first else None,
        "latency_p95_last_minute_ms": float(np.median(last)) if last else None,
    }
    (out / "samples.json").write_text(json.dumps(samples, indent=1))
    print(f"{'figure':<34}{'value':>12}")
    for k, v in result.items():
        if k != "bench":
            print(f"{k:<34}{v if not isinstance(v, float) else round(v, 2):>12}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
