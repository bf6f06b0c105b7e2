"""The live web view: endpoints, token, bounded requests, slow browsers, and the page in a real headless Chromium."""
from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from runtime import Detections, Detector, Pipeline
from runtime.capture import LiveIteratorSource, SequentialSource
from runtime.serve import LivePromptedDetector, LiveServer, ServeError, parse_serve_address
from runtime.testing import make_blob_artifact

pytest.importorskip("aiohttp")


def _moving_red(i):
    f = np.zeros((96, 128, 3), np.uint8)
    f[10:30, (3 * i) % 100:(3 * i) % 100 + 20] = (0, 0, 255)
    return f


def _camera(period=0.02):
    i = 0
    while True:
        time.sleep(period)
        yield _moving_red(i)
        i += 1


def _get(url, headers=None, data=None, method=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _mjpeg_frames(url, n, timeout=10.0):
    """The first n JPEG parts of an MJPEG stream."""
    parts, buf = [], b""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        t0 = time.time()
        while len(parts) < n and time.time() - t0 < timeout:
            buf += r.read1(65536)
            while True:
                start, end = buf.find(b"\xff\xd8"), buf.find(b"\xff\xd9")
                if start < 0 or end < start:
                    break
                parts.append(buf[start:end + 2])
                buf = buf[end + 2:]
    return parts


class FakePrompted:
    """Stands in for runtime.PromptedDetector: records exemplars, detects nothing."""

    def __init__(self):
        self.prompt_names, self.added = [], []

    def add_prompt_image(self, image, boxes=None, points=None, names=None):
        self.added.append((image.shape, None if boxes is None else boxes.tolist(), None if points is None else points.tolist()))
        if names not in self.prompt_names:
            self.prompt_names.append(names)

    def remove_prompt(self, name):
        self.prompt_names.remove(name)

    def save_prompts(self, path):
        path.write_bytes(b"npz")
        return path

    def load_prompts(self, path):
        if not path.is_file():
            raise FileNotFoundError(f"prompt file not found: {path.name}")
        self.prompt_names = ["loaded"]

    def __call__(self, frame):
        return Detections.empty(tuple(self.prompt_names), frame.shape[:2])

    def close(self):
        pass


@pytest.fixture
def live(tmp_path):
    det = Detector(make_blob_artifact(tmp_path))
    server = LiveServer(port=0).start()
    pipe = Pipeline(LiveIteratorSource(_camera()), det, sinks=[server])
    server.stats_fn = pipe.stats
    pipe.start()
    base = f"http://127.0.0.1:{server.port}"
    deadline = time.time() + 10
    while json.loads(_get(base + "/healthz")[1])["frames"] < 3 and time.time() < deadline:
        time.sleep(0.05)
    yield server, pipe, base
    pipe.close()


def test_endpoints_stream_and_stats(live):
    server, pipe, base = live
    status, body, _ = _get(base + "/")
    assert status == 200 and b"/static/app.js" in body and b"http" not in body.split(b"<body>")[1].replace(b"https://", b"")
    assert _get(base + "/static/app.js")[0] == 200
    record = json.loads(_get(base + "/api/detections")[1])
    assert record["frame"] >= 0 and record["detections"][0]["name"] == "red"
    stats = json.loads(_get(base + "/api/stats")[1])
    assert stats["frames"] >= 3 and stats["counts"] == {"red": 1} and "end_to_end" in stats["latency_ms"]
    frames = _mjpeg_frames(base + "/stream.mjpg", 3)
    assert len(frames) == 3 and len({f for f in frames}) == 3  # the stream shows frames that change
    status, jpeg, headers = _get(base + "/api/snapshot")
    assert status == 200 and jpeg[:2] == b"\xff\xd8" and int(headers["X-Frame-Index"]) >= 0
    assert json.loads(_get(base + "/api/prompts")[1]) == {"prompts": None}
    assert _get(base + "/api/prompts", data=b"{}", method="POST")[0] == 401  # changes need the token, first
    assert _get(base + "/api/prompts", data=b"{}", method="POST", headers={"X-Edgedet-Token": server.token})[0] == 404  # no prompted detector


def test_a_stalled_browser_never_blocks_the_pipeline(tmp_path):
    import threading

    det = Detector(make_blob_artifact(tmp_path))
    server = LiveServer(port=0).start()
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads a byte
    pipe = Pipeline(SequentialSource("frames", (_moving_red(i) for i in range(300))), det, sinks=[server])
    out = {}
    runner = threading.Thread(target=lambda: out.update(pipe.run()))
    try:
        t0 = time.perf_counter()
        runner.start()
        status, body, _ = _get(f"http://127.0.0.1:{server.port}/healthz")  # the server still answers others
        assert status == 200 and json.loads(body)["ok"]
        runner.join(timeout=60)
        assert out["frames"] == 300 and time.perf_counter() - t0 < 60
    finally:
        stalled.close()
        pipe.close()


def test_prompt_endpoints_need_the_token_and_bounded_bodies(tmp_path):
    prompted = LivePromptedDetector(FakePrompted(), tmp_path / "prompts")
    server = LiveServer(port=0, prompts=prompted, token="secret").start()
    pipe = Pipeline(LiveIteratorSource(_camera()), prompted, sinks=[server])
    pipe.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        deadline = time.time() + 10
        while json.loads(_get(base + "/healthz")[1])["frames"] < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert _get(base + "/api/snapshot")[0] == 401  # a token given on purpose: the whole view is private
        frame = int(_get(base + "/api/snapshot", headers={"X-Edgedet-Token": "secret"})[2]["X-Frame-Index"])
        body = json.dumps({"frame": frame, "box": [10, 10, 40, 30], "name": "red thing"}).encode()
        assert _get(base + "/api/prompts", data=body, method="POST")[0] == 401
        assert _get(base + "/api/prompts", data=body, method="POST", headers={"X-Edgedet-Token": "wrong"})[0] == 401
        status, out, _ = _get(base + "/api/prompts", data=body, method="POST", headers={"X-Edgedet-Token": "secret"})
        assert status == 200 and json.loads(out)["prompts"] == ["red thing"]
        assert prompted.detector.added == [((96, 128, 3), [[10.0, 10.0, 40.0, 30.0]], None)]
        ok = {"X-Edgedet-Token": "secret"}
        bad = json.dumps({"frame": 10 ** 9, "box": [1, 1, 9, 9], "name": "x"}).encode()
        assert b"no longer held" in _get(base + "/api/prompts", data=bad, method="POST", headers=ok)[1]
        flipped = json.dumps({"frame": frame, "box": [40, 10, 10, 30], "name": "x"}).encode()
        assert _get(base + "/api/prompts", data=flipped, method="POST", headers=ok)[0] == 400
        huge = json.dumps({"frame": frame, "name": "x" * 100_000}).encode()
        assert _get(base + "/api/prompts", data=huge, method="POST", headers=ok)[0] == 413
        escape = json.dumps({"file": "../../etc/evil"}).encode()
        assert _get(base + "/api/prompts/save", data=escape, method="POST", headers=ok)[0] == 400
        assert _get(base + "/api/prompts/save", data=b'{"file": "shelf"}', method="POST", headers=ok)[0] == 200
        assert (tmp_path / "prompts" / "shelf.npz").is_file()
        assert _get(base + "/api/prompts/save", data=b'{"file": "shelf"}', method="POST", headers=ok)[0] == 400  # no overwrite
        assert json.loads(_get(base + "/api/prompts/files", headers=ok)[1]) == {"files": ["shelf"]}
        assert json.loads(_get(base + "/api/prompts/red%20thing", method="DELETE", headers=ok)[1])["prompts"] == []
        assert _get(base + "/api/prompts/load", data=b'{"file": "shelf"}', method="POST", headers=ok)[0] == 200
    finally:
        pipe.close()


def test_addresses_are_loopback_unless_asked():
    assert parse_serve_address("8080") == ("127.0.0.1", 8080, False)
    assert parse_serve_address("127.0.0.1:9000") == ("127.0.0.1", 9000, False)
    assert parse_serve_address("8080", host="0.0.0.0") == ("0.0.0.0", 8080, True)
    with pytest.raises(ValueError, match="--host 0.0.0.0"):
        parse_serve_address("0.0.0.0:8080")
    with pytest.raises(ValueError, match=r"\[HOST:\]PORT"):
        parse_serve_address("eighty")
    with pytest.raises(ServeError, match="loopback"):
        LiveServer("0.0.0.0", 0)


def test_port_in_use_is_a_clear_error():
    first = LiveServer(port=0).start()
    try:
        with pytest.raises(ServeError, match=f"127.0.0.1:{first.port}"):
            LiveServer(port=first.port).start()
    finally:
        first.close()


def test_demo_serve_address_is_checked_before_the_slow_work(capsys):
    from edgedet.cli import main

    t0 = time.perf_counter()
    assert main(["demo", "--serve", "0.0.0.0:8080", "--frames", "2"]) != 0
    assert "--host 0.0.0.0" in capsys.readouterr().err and time.perf_counter() - t0 < 30
