"""The live view's frames and resources: frozen frames pinned per viewer, the memory-sized ring, a viewer's
own frame in "Last detections", the viewer cap, the write timeout, one JPEG encode per frame, and the
prompted live view's threshold and one box per object."""
from __future__ import annotations

import argparse
import json
import logging
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest

from runtime.serve import LivePromptedDetector, LiveServer
from runtime.serve.prompts import merge_overlapping
from runtime.types import Detections
from test_serve import FakePrompted, _get
from test_serve_access import _result

pytest.importorskip("aiohttp")
TOKEN = {"X-Edgedet-Token": "t"}


def _post(base, path, body):
    status, out, headers = _get(base + path, data=json.dumps(body).encode(), method="POST",
                                headers={**TOKEN, "Content-Type": "application/json"})
    return status, out, headers


@pytest.fixture
def prompted(tmp_path):
    live = LivePromptedDetector(FakePrompted(), tmp_path / "prompts")
    server = LiveServer(port=0, prompts=live, token="t", ring_bytes=1, pin_idle_s=3.0, gone_s=0.3).start()
    server(_result(0))
    yield server, live, f"http://127.0.0.1:{server.port}"
    server.close()


def _stream_socket(port, viewer, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET /stream.mjpg?viewer={viewer}&token=t HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    return s


def _wait(fn, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if fn():
            return True
        time.sleep(0.05)
    return False


def test_a_frozen_frame_stays_pinned_until_its_prompt_is_added(prompted):
    server, live, base = prompted
    status, jpeg, headers = _post(base, "/api/freeze", {"viewer": "alice"})
    frozen = int(headers["X-Frame-Index"])
    assert status == 200 and jpeg[:2] == b"\xff\xd8" and frozen == 0
    for i in range(1, 200):  # far more frames than the ring holds (1 here): the pin keeps frame 0
        server(_result(i))
    assert server.store.ring_frames == 1
    status, out, _ = _post(base, "/api/prompts", {"viewer": "alice", "frame": frozen, "box": [10, 10, 40, 30], "name": "red"})
    assert status == 200 and json.loads(out)["frame"] == frozen
    assert live.detector.added[0][0] == (96, 128, 3) and server.store.pins == 0  # added, so released
    status, out, _ = _post(base, "/api/prompts", {"viewer": "alice", "frame": frozen, "box": [10, 10, 40, 30], "name": "red"})
    assert status == 400 and "freeze a frame again" in json.loads(out)["error"]
    # one pinned frame per viewer; "Back to live" releases it
    _post(base, "/api/freeze", {"viewer": "bob"})
    _post(base, "/api/freeze", {"viewer": "bob"})
    _post(base, "/api/freeze", {"viewer": "carol"})
    assert server.store.pins == 2
    assert json.loads(_post(base, "/api/release", {"viewer": "carol"})[1]) == {"released": True}
    assert server.store.pins == 1
    assert _get(base + "/api/freeze", data=b'{"viewer": "x"}', method="POST")[0] == 401  # pinning memory needs the token


def test_a_pin_ends_when_its_page_leaves_or_sits_idle(prompted):
    server, _, base = prompted
    s = _stream_socket(server.port, "dave")
    try:
        assert _wait(lambda: server.clients == 1)
        _post(base, "/api/freeze", {"viewer": "dave"})
        _post(base, "/api/freeze", {"viewer": "erin"})  # an API client without a stream: only the idle timeout
        time.sleep(0.6)
        assert server.store.pins == 2  # dave's page is still open
    finally:
        s.close()  # the page is closed
    assert _wait(lambda: server.store.pinned("dave", touch=False) is None, 5.0)
    assert server.store.pinned("erin", touch=False) is not None or server.store.pins == 0
    assert _wait(lambda: server.store.pins == 0, 10.0)  # erin's pin timed out (pin_idle_s=3)


def test_the_frame_ring_is_kept_only_with_prompts_and_sized_by_memory(tmp_path):
    hd = np.zeros((1080, 1920, 3), np.uint8)
    plain = LiveServer(port=0)  # not started: only the sink side is exercised
    prompt = LiveServer(port=0, prompts=LivePromptedDetector(FakePrompted(), tmp_path))
    small = LiveServer(port=0, prompts=LivePromptedDetector(FakePrompted(), tmp_path))
    for i in range(100):
        r = _result(i)
        plain(r)
        small(r)
        prompt(type(r)(type(r.frame)(hd, i, r.frame.timestamp), r.detections, 1.0))
    assert plain.store.ring_frames == 0  # no prompting possible: no frames kept beyond the newest
    assert prompt.store.ring_frames == 64 * 2**20 // hd.nbytes == 10  # 64 MiB of 1080p frames, not 64 (~400 MB)
    assert small.store.ring_frames == 64


def test_last_detections_describe_the_frame_the_viewer_sees(prompted):
    server, _, base = prompted
    _post(base, "/api/freeze", {"viewer": "alice"})
    for i in range(1, 30):
        server(_result(i))
    mine = json.loads(_get(base + "/api/detections?viewer=alice", headers=TOKEN)[1])
    assert mine["frame"] == 0 and mine["frozen"] is True and mine["detections"][0]["name"] == "red"
    assert json.loads(_get(base + "/api/detections", headers=TOKEN)[1])["frame"] == 29  # no viewer: the newest
    # a streaming viewer: the frame last written to its stream
    req = urllib.request.Request(f"{base}/stream.mjpg?viewer=bob", headers=TOKEN)
    with urllib.request.urlopen(req, timeout=10) as r:
        buf = b""
        while b"X-Frame-Index: 29" not in buf:
            buf += r.read1(65536)
        seen = json.loads(_get(base + "/api/detections?viewer=bob", headers=TOKEN)[1])
        assert seen["frame"] == 29 and seen["frozen"] is False


def _publisher(server, stop, shape=(96, 128, 3), period=0.02, noise=False):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, shape, dtype=np.uint8) for _ in range(4)] if noise else None

    def run():
        i = 0
        while not stop.is_set():
            r = _result(i, shape)
            if noise:
                r = type(r)(type(r.frame)(frames[i % 4], i, time.perf_counter()), r.detections, 1.0)
            server(r)
            i += 1
            time.sleep(period)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_the_number_of_viewers_is_capped_with_a_clear_message():
    server = LiveServer(port=0, token="t", max_viewers=2).start()
    stop = threading.Event()
    _publisher(server, stop)
    socks = [_stream_socket(server.port, f"v{i}") for i in range(2)]
    try:
        assert _wait(lambda: server.clients == 2)
        status, body, _ = _get(f"http://127.0.0.1:{server.port}/stream.mjpg", headers=TOKEN)
        assert status == 503 and "2 viewers, its limit" in json.loads(body)["error"]
        socks.pop().close()
        assert _wait(lambda: server.clients == 1)
        socks.append(_stream_socket(server.port, "v3"))
        assert _wait(lambda: server.clients == 2)
    finally:
        stop.set()
        for s in socks:
            s.close()
        server.close()


def test_a_browser_that_stops_reading_is_dropped_without_tracebacks(caplog, capfd):
    caplog.set_level(logging.DEBUG)
    server = LiveServer(port=0, token="t", write_timeout=0.5).start()
    stop = threading.Event()
    _publisher(server, stop, shape=(480, 640, 3), noise=True)  # ~300 KB JPEGs: the socket buffers fill at once
    stalled = _stream_socket(server.port, "stalled", rcvbuf=4096)
    leaver = _stream_socket(server.port, "leaver")
    try:
        assert _wait(lambda: server.clients == 2)
        leaver.recv(65536)
        leaver.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        leaver.close()  # a reset mid-stream: the browser vanished
        assert _wait(lambda: server.clients == 0, 15.0), f"{server.clients} streams still open"
        assert server.closed_slow == 1
        assert _get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200
    finally:
        stop.set()
        stalled.close()
        server.close()
    logged = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not logged, [r.getMessage() for r in logged]
    assert "Traceback" not in capfd.readouterr().err


def test_one_jpeg_encode_per_frame_for_all_viewers(monkeypatch):
    import runtime.serve.frames as frames

    slow = frames.draw

    def slow_draw(image, detections):  # every viewer asks while the first encode still runs
        time.sleep(0.05)
        return slow(image, detections)

    monkeypatch.setattr(frames, "draw", slow_draw)
    server = LiveServer(port=0, token="t").start()
    stop = threading.Event()
    _publisher(server, stop, period=0.1)
    seen, threads = [set() for _ in range(4)], []

    def watch(k):
        req = urllib.request.Request(f"http://127.0.0.1:{server.port}/stream.mjpg?viewer=w{k}", headers=TOKEN)
        with urllib.request.urlopen(req, timeout=10) as r:
            buf = b""
            while len(seen[k]) < 8:
                buf += r.read1(65536)
                while b"X-Frame-Index: " in buf and b"\r\n\r\n" in buf.split(b"X-Frame-Index: ", 1)[1]:
                    head, buf = buf.split(b"X-Frame-Index: ", 1)
                    index, buf = buf.split(b"\r\n", 1)
                    seen[k].add(int(index))

    try:
        threads = [threading.Thread(target=watch, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        stop.set()
        server.close()
    sent = set().union(*seen)
    assert all(len(s) >= 8 for s in seen)
    assert server.jpeg.encodes <= len(sent) + 1, f"{server.jpeg.encodes} encodes for {len(sent)} frames sent"


def _dets(rows, names):
    boxes = np.array([r[0] for r in rows], np.float32)
    return Detections(boxes, np.array([r[1] for r in rows], np.float32), np.array([r[2] for r in rows]), names, (100, 100))


def test_one_box_per_object_with_every_name_it_carries():
    names = ("triangle", "circle", "my shape")
    det = _dets([([10, 10, 50, 50], 0.9, 0), ([11, 10, 50, 51], 0.8, 2), ([10, 11, 51, 50], 0.5, 0),
                 ([60, 60, 90, 90], 0.7, 1)], names)
    merged = merge_overlapping(det, 0.7)
    assert merged.names == ["triangle / my shape", "circle"]
    assert merged.scores.tolist() == pytest.approx([0.9, 0.7]) and merged.boxes_xyxy[0].tolist() == [10, 10, 50, 50]
    apart = _dets([([10, 10, 50, 50], 0.9, 0), ([30, 10, 70, 50], 0.8, 2)], names)  # IoU 0.33: two objects
    assert merge_overlapping(apart, 0.7).names == ["triangle", "my shape"]

    class Stacked(FakePrompted):
        def __call__(self, frame):
            return det

    stacked = Stacked()
    stacked.prompt_names = list(names)
    live = LivePromptedDetector(stacked, ".", merge_iou=0.7)
    assert live(np.zeros((100, 100, 3), np.uint8)).names == ["triangle / my shape", "circle"]


def record_prompted_detector(monkeypatch) -> dict:
    """Replaces runtime.prompted.PromptedDetector with a fake that records its keyword arguments (returned)."""
    import runtime.prompted as prompted_module

    made = {}

    class Recorder(FakePrompted):
        def __init__(self, encoder, detector, **kwargs):
            super().__init__()
            made.update(kwargs)

    monkeypatch.setattr(prompted_module, "PromptedDetector", Recorder)
    return made


def test_the_live_prompted_view_uses_the_prompted_demos_threshold(monkeypatch, tmp_path):
    import runtime.prompted as prompted_module
    from converters.demo_prompted import PROMPTED_DRAW_CONF
    from runtime.serve.cli_options import add_serve_arguments, make_detector

    made = record_prompted_detector(monkeypatch)
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    for flag in ("--model", "--backend", "--device", "--conf", "--classes"):
        parser.add_argument(flag, default={"--backend": "auto", "--device": "CPU"}.get(flag),
                            type=float if flag == "--conf" else str)
    args = parser.parse_args(["--model", "d.onnx", "--prompt-encoder", "e.onnx", "--prompt-dir", str(tmp_path)])
    live = make_detector(args, {})
    assert made["conf"] == PROMPTED_DRAW_CONF == prompted_module.PROMPTED_CONF and made["dedup_iou"] == 0.7
    assert live.merge_iou == 0.7
    make_detector(parser.parse_args(["--model", "d.onnx", "--prompt-encoder", "e.onnx", "--conf", "0.3"]), {})
    assert made["conf"] == 0.3


def test_the_prompted_demos_live_view_draws_as_the_demo(monkeypatch, tmp_path):
    from converters.demo_prompted import PROMPTED_DRAW_CONF, live_prompted_detector

    made = record_prompted_detector(monkeypatch)
    summary = {"prompt_encoder": "e.xml", "artifact": "d.xml", "prompts_file": tmp_path / "p.npz"}
    (tmp_path / "p.npz").write_bytes(b"")
    live = live_prompted_detector(summary, None, tmp_path)
    assert made["conf"] == PROMPTED_DRAW_CONF == 0.4 and made["dedup_iou"] == 0.7 and live.merge_iou == 0.7


def test_tracks_seen_stays_exact_with_bounded_memory(monkeypatch):
    import dataclasses

    import runtime.serve.server as server_module

    monkeypatch.setattr(server_module, "TRACKS_KEPT", 400)
    server = LiveServer(port=0)  # the sink side only
    base = _result(0)
    for start in range(0, 2000, 50):
        ids = np.arange(start, start + 50)
        det = Detections(np.tile([[10, 10, 40, 30]], (50, 1)), np.full(50, 0.9), np.zeros(50), ("red",), (96, 128), track_ids=ids)
        server(dataclasses.replace(base, detections=det))
    assert len(server._tracks) <= 450 and len(server._tracks) + server._tracks_forgotten == 2000
