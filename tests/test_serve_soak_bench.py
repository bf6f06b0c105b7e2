"""benches/serve_soak.py, briefly: four viewers (one never reads, replaced when dropped), and the figures it reports."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.testing import make_blob_artifact

pytest.importorskip("aiohttp")


@pytest.mark.slow
def test_serve_soak_runs_four_viewers_and_reports_its_figures(tmp_path, capsys):
    from browser_helpers import BrowserUnavailable, chromium_driver
    from script_loader import load_script

    try:
        chromium_driver().quit()
    except BrowserUnavailable as e:
        pytest.skip(str(e))
    video = tmp_path / "noise.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (640, 480))
    rng = np.random.default_rng(0)
    for _ in range(25):  # noise: large JPEGs, so the client that never reads backs up at once
        writer.write(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    writer.release()
    bench = load_script(Path(__file__).resolve().parents[1] / "benches" / "serve_soak.py", "serve_soak_bench")
    code = bench.main(["--model", str(make_blob_artifact(tmp_path / "model")), "--video", str(video), "--minutes", "0.3",
                       "--sample-every", "1", "--reconnect-every", "4", "--write-timeout", "1", "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["viewers"] == "headless Chromium, 2 MJPEG readers, 1 stalled"
    assert result["browser_visits"] >= 2 and result["reader_visits"] >= 4 and result["reader_frames"] > 20
    assert result["stalled_clients_closed"] >= 1 and result["stalled_clients_opened"] >= 2  # dropped, and replaced
    assert result["jpeg_encodes"] <= result["frames"] + 1  # one encode per frame, however many viewers
    assert result["rss_baseline_mb"] > 0 and result["p95_first_ms"] > 0 and "load_mean" in result and result["cpu"]
    assert code == (0 if result["rss_ok"] and result["latency_ok"] else 1)
    assert any(line.startswith("rss_growth_pct") for line in lines) and any(line.startswith("p95_drift_pct") for line in lines)
