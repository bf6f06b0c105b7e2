"""Soak of the live web view: four viewers for a long time, one of which never reads.

    python benches/serve_soak.py                   # 10 minutes
    python benches/serve_soak.py --minutes 2 --reconnect-every 30

The embedded demo detector (exported once, OpenVINO) runs on the rendered demo video played live in
a loop, through the threaded pipeline with a private `LiveServer` sink (a token given: every endpoint
needs it). The viewers:
  1. a headless Chromium (Debian's chromium + chromium-driver via selenium) opens the start-up URL (its
     cookie then carries the token), watches for `--reconnect-every` seconds, leaves, comes back;
  2-3. two MJPEG readers that read the stream as fast as it comes, reconnecting on the same period;
  4. a stalled client that asks for the stream and never reads a byte: the server's write timeout
     closes it, and the bench opens another at once, for the whole run.
(Without Chromium a third reader stands in for it, said in the table.)

Every `--sample-every` seconds the bench records this process's resident memory (pipeline + server)
and the machine's 1-minute load average. Reports: RSS growth from the end of the warm-up (the first
minute, a fifth of short runs) to the end (target < 2%), the end-to-end latency p95 (capture ->
sinks) of the first and last window (a minute; a third of runs under 5 minutes; target within 10%),
frames, dropped, JPEG encodes per frame sent, stalled clients closed, reconnects, and the load
(figures from a loaded machine are not comparable with an idle one's). Prints a table; the last
line is one JSON object with the same figures.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # browser_helpers: the same headless Chromium the tests drive
sys.path.insert(0, str(REPO / "benches"))

from _machine import cpu_model, load_summary  # noqa: E402
from _samples import SampleLog  # noqa: E402

RSS_TARGET_PCT, P95_TARGET_PCT = 2.0, 10.0


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


class Reader(threading.Thread):
    """Reads the MJPEG stream as fast as it comes; reconnects every `period` s (offset by `phase`)."""

    def __init__(self, url: str, token: str, period: float, phase: float, stop: threading.Event):
        super().__init__(daemon=True)
        self.url, self.token, self.period, self.phase, self.stop = url, token, period, phase, stop
        self.frames = self.visits = self.errors = 0

    def run(self) -> None:
        first = True
        while not self.stop.is_set():
            until = time.monotonic() + (self.phase if first else self.period)
            first = False
            try:
                req = urllib.request.Request(self.url, headers={"X-Edgedet-Token": self.token})
                with urllib.request.urlopen(req, timeout=30) as r:
                    self.visits += 1
                    while time.monotonic() < until and not self.stop.is_set():
                        self.frames += r.read1(1 << 16).count(b"X-Frame-Index")
            except OSError:
                self.errors += 1
                time.sleep(1.0)


def stalled_client(port: int, token: str) -> socket.socket:
    """Asks for the stream and never reads (a tiny receive buffer: the server's writes back up at once)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET /stream.mjpg?viewer=stalled HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Edgedet-Token: {token}\r\n\r\n".encode())
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--reconnect-every", type=float, default=60.0, help="seconds a visit of the browser and readers lasts")
    ap.add_argument("--sample-every", type=float, default=5.0)
    ap.add_argument("--write-timeout", type=float, default=10.0, help="the server's write timeout (s)")
    ap.add_argument("--model", default=None, help="artifact to run (default: the embedded demo detector, exported)")
    ap.add_argument("--video", default=None, help="video to loop (default: the demo's rendered video)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_serve_soak"))
    args = ap.parse_args(argv)
    if args.minutes <= 0:
        ap.error("--minutes must be positive")

    from browser_helpers import BrowserUnavailable, chromium_driver
    from converters.demo import DEMO_CHECKPOINT, export_demo_model
    from converters.demo_video import render_demo_video
    from runtime import Detector, Pipeline
    from runtime.capture import PacedVideoSource
    from runtime.serve import LiveServer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    artifact = Path(args.model) if args.model else export_demo_model(DEMO_CHECKPOINT, out, "openvino")
    video = Path(args.video) if args.video else render_demo_video(out, 150)[0]
    detector = Detector(artifact, threads=1)
    token = secrets.token_urlsafe(16)
    server = LiveServer(port=0, token=token, write_timeout=args.write_timeout).start()
    t0 = time.perf_counter()
    # (s since start, capture -> sinks ms) per frame, preallocated: the bench's bookkeeping is not RSS growth
    latencies = SampleLog.for_run(("t_s", "ms"), args.minutes * 60.0 + 60.0, max_rate_hz=200.0)
    pipe = Pipeline(PacedVideoSource(video, loop=True), detector,
                    sinks=[server, lambda r: latencies.append(time.perf_counter() - t0, r.latency_ms)])
    server.stats_fn = pipe.stats
    try:
        driver, browser_note = chromium_driver(), "headless Chromium"
    except BrowserUnavailable as e:
        driver, browser_note = None, f"a third MJPEG reader (no browser: {e})"
    stop = threading.Event()
    stream_url = f"http://127.0.0.1:{server.port}/stream.mjpg"
    readers = [Reader(f"{stream_url}?viewer=reader{k}", token, args.reconnect_every, args.reconnect_every * (k + 1) / 3, stop)
               for k in range(2 if driver else 3)]
    samples, visits, stalled_opened = [], 0, 0
    pipe.start()
    for r in readers:
        r.start()
    stalled, seen_closed = stalled_client(server.port, token), 0
    stalled_opened += 1
    next_visit = t0
    try:
        while time.perf_counter() - t0 < args.minutes * 60:
            now = time.perf_counter()
            if driver is not None and now >= next_visit:
                if visits:
                    driver.get("about:blank")  # the browser leaves: the server must drop the stream
                    time.sleep(0.5)
                driver.get(server.url)
                visits += 1
                next_visit = now + args.reconnect_every
            time.sleep(args.sample_every)
            if server.closed_slow > seen_closed:  # the server dropped the stalled client: another one stalls
                seen_closed = server.closed_slow
                stalled.close()
                stalled = stalled_client(server.port, token)
                stalled_opened += 1
            stats = pipe.stats()
            recent_p95 = latencies.window_p95("ms", now - t0 - args.sample_every, float("inf"))
            samples.append({"t_s": time.perf_counter() - t0, "rss_mb": rss_mb(), "load": os.getloadavg()[0],
                            "frames": stats["frames"], "dropped": stats["dropped"], "viewers": server.clients,
                            "p95_ms": None if np.isnan(recent_p95) else recent_p95})
            s = samples[-1]
            print(f"\r{s['t_s']:6.0f} s  RSS {s['rss_mb']:7.1f} MB  frames {s['frames']}  p95 {s['p95_ms'] or 0:6.1f} ms  "
                  f"viewers {s['viewers']}  load {s['load']:.1f}   ", end="", file=sys.stderr, flush=True)
    finally:
        stop.set()
        stalled.close()
        if driver is not None:
            driver.quit()
        pipe.close()
        detector.close()
        server.close()
    print(file=sys.stderr)

    elapsed = samples[-1]["t_s"]
    warm = min(60.0, elapsed / 5)
    after = [s for s in samples if s["t_s"] >= warm] or samples
    rss_start, rss_end = after[0]["rss_mb"], samples[-1]["rss_mb"]
    window = 60.0 if elapsed >= 300.0 else elapsed / 3
    first, last = latencies.window_p95("ms", 0.0, window), latencies.window_p95("ms", elapsed - window, elapsed + 1)
    sent = sum(r.frames for r in readers)
    result = {
        "bench": "serve_soak", "minutes": round(elapsed / 60, 2), "viewers": f"{browser_note}, {len(readers)} MJPEG readers, 1 stalled",
        "frames": samples[-1]["frames"], "dropped": samples[-1]["dropped"],
        "rss_baseline_mb": round(rss_start, 1), "rss_baseline_at_s": round(warm, 1), "rss_end_mb": round(rss_end, 1),
        "rss_growth_pct": round(100.0 * (rss_end - rss_start) / rss_start, 2),
        "window_s": round(window, 1), "p95_first_ms": round(first, 2), "p95_last_ms": round(last, 2),
        "p95_drift_pct": round(100.0 * (last - first) / first, 2),
        "reader_frames": sent, "reader_visits": sum(r.visits for r in readers), "reader_errors": sum(r.errors for r in readers),
        "browser_visits": visits, "stalled_clients_closed": server.closed_slow, "stalled_clients_opened": stalled_opened,
        "jpeg_encodes": server.jpeg.encodes, **load_summary([s["load"] for s in samples]), **cpu_model(),
    }
    result["rss_ok"] = result["rss_growth_pct"] < RSS_TARGET_PCT
    result["latency_ok"] = abs(result["p95_drift_pct"]) <= P95_TARGET_PCT
    (out / "samples.json").write_text(json.dumps(samples, indent=1))
    print(f"{'figure':<26}{'value':>14}")
    for k, v in result.items():
        if k != "bench":
            print(f"{k:<26}{v if not isinstance(v, float) else round(v, 2)!s:>14}")
    print(json.dumps(result))
    return 0 if result["rss_ok"] and result["latency_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
