"""A live view in the browser: the annotated stream, live stats and the last detections, served by the device.

    server = LiveServer(port=8080, stats=pipeline.stats).start()   # a pipeline sink: Pipeline(..., sinks=[server])
    print(server.url)                                               # http://127.0.0.1:8080/?token=...

Built on aiohttp (asyncio): every browser is one coroutine on the server's own thread, so a slow
or vanished browser only delays itself. The pipeline's sink call is O(1) (it swaps a reference);
frames are drawn and JPEG-encoded lazily, once per new frame that a browser actually asks for,
and each browser always gets the newest frame (never a growing queue).

Endpoints: `/` the page (static files in the package, no CDN); `/stream.mjpg` the annotated
MJPEG stream; `/api/snapshot` one raw frame (header `X-Frame-Index`) to draw prompts on;
`/api/detections` the last frame's detections; `/api/stats` FPS, per-stage latency, dropped
frames, counts per class and tracks; `/healthz`. With a prompted detector: `GET/POST
/api/prompts`, `DELETE /api/prompts/{name}`, `POST /api/prompts/save|load`, `GET
/api/prompts/files`; every prompt-changing call needs the token printed at start-up (header
`X-Edgedet-Token` or `?token=`).

Security: binds 127.0.0.1 unless `allow_remote=True` (the CLI's explicit `--host`, with a
warning); request bodies are limited to 64 KiB; prompt files stay inside one folder.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import cv2
import numpy as np

from runtime.draw import draw

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024
BOUNDARY = "edgedetframe"


class ServeError(RuntimeError):
    """The web view cannot start (aiohttp missing, address refused, port taken)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_serve_address(text: str, host: Optional[str] = None):
    """"8080" | "127.0.0.1:8080" (+ an explicit --host) -> (host, port, remote_allowed)."""
    text = str(text).strip()
    bind, _, port_text = text.rpartition(":")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--serve takes [HOST:]PORT, e.g. 8080 or 127.0.0.1:8080; got {text!r}")
    bind = bind.strip("[]") or "127.0.0.1"
    if host:
        if bind not in ("127.0.0.1", host):
            raise ValueError(f"--serve {text} and --host {host} name different addresses; give the address once")
        return host, int(port_text), not is_loopback(host)
    if not is_loopback(bind):
        raise ValueError(f"--serve {text} would expose the stream beyond this machine; "
                         f"to do that on purpose, pass --host {bind} (the page and prompt endpoints then need the token)")
    return bind, int(port_text), False


class LiveServer:
    """The web view as a pipeline sink. prompts: a `runtime.serve.LivePromptedDetector` to edit
    from the page (None: view only). stats: a callable returning the pipeline's stats dict."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, token: Optional[str] = None, allow_remote: bool = False,
                 prompts: Any = None, stats: Optional[Callable[[], Dict[str, Any]]] = None, jpeg_quality: int = 80,
                 max_fps: float = 30.0, frame_history: int = 64, title: str = "edgedet"):
        try:
            import aiohttp  # noqa: F401
        except ImportError as e:
            raise ServeError("the live web view needs aiohttp: pip install 'edgedet[serve]' (or pip install aiohttp)") from e
        if not allow_remote and not is_loopback(host):
            raise ServeError(f"refusing to bind {host}: not a loopback address (pass allow_remote=True / --host {host} on purpose)")
        self.host, self.port, self.allow_remote = host, int(port), allow_remote
        self.token = token or secrets.token_urlsafe(16)
        self.prompts, self.stats_fn, self.title = prompts, stats, title
        self.jpeg_quality, self.min_interval = int(jpeg_quality), 1.0 / max(1e-3, float(max_fps))
        self._lock = threading.Lock()
        self._latest: Any = None  # the newest Result
        self._version = 0
        self._frames: "OrderedDict[int, np.ndarray]" = OrderedDict()  # frame index -> raw image, for prompts
        self._history = int(frame_history)
        self._jpeg_cache: Dict[str, tuple] = {}
        self._counts: Counter = Counter()
        self._tracks: set = set()
        self._published = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._new_frame: Optional[asyncio.Event] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._start_error: Optional[BaseException] = None
        self._runner: Any = None
        self._closing = False
        self.clients = 0

    # -- the sink side (pipeline thread) ------------------------------------------------------
    def __call__(self, result: Any) -> None:
        """Pipeline sink: keep a reference to the newest result (O(1)); wake the browsers."""
        with self._lock:
            self._latest = result
            self._version += 1
            self._published += 1
            self._frames[result.frame.index] = result.frame.image
            while len(self._frames) > self._history:
                self._frames.popitem(last=False)
            self._counts = Counter(result.detections.names)
            ids = getattr(result.detections, "track_ids", None)
            if ids is not None:
                self._tracks.update(int(i) for i in np.asarray(ids).ravel() if int(i) >= 0)
        loop = self._loop
        if loop is not None and self._new_frame is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._pulse)
            except RuntimeError:  # loop closing
                pass

    def _pulse(self) -> None:
        """On the server loop: wake every browser waiting for a frame (each waits on the event it saw)."""
        if self._new_frame is None:
            return
        event, self._new_frame = self._new_frame, asyncio.Event()
        event.set()

    # -- life cycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/?token={self.token}"

    def start(self) -> "LiveServer":
        self._thread = threading.Thread(target=self._serve, name="edgedet-serve", daemon=True)
        self._thread.start()
        self._ready.wait(15.0)
        if self._start_error is not None:
            raise ServeError(f"cannot serve on {self.host}:{self.port}: {self._start_error}") from self._start_error
        if not self._ready.is_set():
            raise ServeError(f"the web view did not start on {self.host}:{self.port} within 15 s")
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._startup())
        except BaseException as e:  # port taken, address not available
            self._start_error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _startup(self) -> None:
        from aiohttp import web

        self._new_frame = asyncio.Event()
        app = web.Application(client_max_size=MAX_BODY)
        r = app.router
        r.add_get("/", self._index)
        r.add_static("/static/", STATIC)
        r.add_get("/stream.mjpg", self._stream)
        r.add_get("/api/snapshot", self._snapshot)
        r.add_get("/api/detections", self._detections)
        r.add_get("/api/stats", self._stats)
        r.add_get("/healthz", self._health)
        r.add_get("/api/prompts", self._prompt_list)
        r.add_post("/api/prompts", self._prompt_add)
        r.add_delete("/api/prompts/{name}", self._prompt_remove)
        r.add_post("/api/prompts/save", self._prompt_save)
        r.add_post("/api/prompts/load", self._prompt_load)
        r.add_get("/api/prompts/files", self._prompt_files)
        # shutdown_timeout: at close, open streams get 1 s to end (they end at once on _closing).
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # an OS-chosen port: read it back
            self.port = self._runner.addresses[0][1]

    def close(self) -> None:
        """Stop serving (browsers see the stream end); safe to call twice."""
        self._closing = True
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(self._pulse)  # streams see _closing and end
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self._loop = None

    # -- helpers ----------------------------------------------------------------------------------
    def _json(self, data: Any, status: int = 200):
        from aiohttp import web

        return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, default=float))

    def _authorised(self, request) -> bool:
        given = request.headers.get("X-Edgedet-Token") or request.query.get("token") or ""
        return secrets.compare_digest(given, self.token)

    def _encode(self, kind: str) -> Optional[tuple]:
        """(version, frame index, JPEG bytes) of the newest frame, annotated or raw; cached per version."""
        with self._lock:
            result, version = self._latest, self._version
        if result is None:
            return None
        cached = self._jpeg_cache.get(kind)
        if cached and cached[0] == version:
            return cached
        image = draw(result.frame.image, result.detections) if kind == "annotated" else result.frame.image
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            return None
        entry = (version, result.frame.index, buf.tobytes())
        self._jpeg_cache[kind] = entry
        return entry

    # -- handlers ---------------------------------------------------------------------------------
    async def _index(self, request):
        from aiohttp import web

        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def _health(self, request):
        return self._json({"ok": True, "frames": self._published, "clients": self.clients, "prompted": self.prompts is not None})

    async def _stream(self, request):
        from aiohttp import web

        resp = web.StreamResponse(headers={"Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                           "Cache-Control": "no-store"})
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        last, self.clients = -1, self.clients + 1
        try:
            while not self._closing:
                event = self._new_frame
                if self._version == last:
                    try:
                        await asyncio.wait_for(event.wait(), timeout=1.0)
                    except asyncio.TimeoutError:
                        continue
                t0 = time.perf_counter()
                entry = await loop.run_in_executor(None, self._encode, "annotated")
                if entry is None or entry[0] == last:
                    await asyncio.sleep(0.01)
                    continue
                last = entry[0]
                head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(entry[2])}\r\nX-Frame-Index: {entry[1]}\r\n\r\n"
                await resp.write(head.encode() + entry[2] + b"\r\n")  # waits for this browser only
                await asyncio.sleep(max(0.0, self.min_interval - (time.perf_counter() - t0)))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.clients -= 1
        return resp

    async def _snapshot(self, request):
        from aiohttp import web

        entry = await asyncio.get_running_loop().run_in_executor(None, self._encode, "raw")
        if entry is None:
            return self._json({"error": "no frame yet"}, status=503)
        return web.Response(body=entry[2], content_type="image/jpeg",
                            headers={"X-Frame-Index": str(entry[1]), "Cache-Control": "no-store"})

    async def _detections(self, request):
        with self._lock:
            result = self._latest
        if result is None:
            return self._json({"frame": None, "detections": []})
        record = {"frame": result.frame.index, "timestamp": result.frame.timestamp, "latency_ms": result.latency_ms}
        record.update(result.detections.to_dict())
        return self._json(record)

    async def _stats(self, request):
        stats = self.stats_fn() if self.stats_fn is not None else {}
        with self._lock:
            counts, tracks = dict(self._counts), len(self._tracks)
        return self._json({"fps": stats.get("fps", 0.0), "frames": stats.get("frames", self._published),
                           "dropped": stats.get("dropped", 0), "latency_ms": stats.get("latency_ms", {}),
                           "counts": counts, "tracks_seen": tracks, "clients": self.clients,
                           "prompts": list(self.prompts.names) if self.prompts is not None else None})

    def _need_prompts(self, request):
        if self.prompts is None:
            return self._json({"error": "this run has no prompted detector (edgedet run --prompt-encoder ...)"}, status=404)
        if not self._authorised(request):
            return self._json({"error": "missing or wrong token: open the URL printed at start-up (…/?token=...)"}, status=401)
        return None

    async def _body(self, request) -> Dict[str, Any]:
        try:
            data = await request.json()
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"the request body must be JSON ({e})") from e
        if not isinstance(data, dict):
            raise ValueError("the request body must be a JSON object")
        return data

    async def _prompt_call(self, request, fn: Callable[[Dict[str, Any]], Any]):
        refused = self._need_prompts(request)
        if refused is not None:
            return refused
        try:
            data = await self._body(request) if request.can_read_body else {}
            out = await asyncio.get_running_loop().run_in_executor(None, fn, data)
        except (ValueError, KeyError, FileNotFoundError, FileExistsError) as e:
            return self._json({"error": str(e).strip("'\"")}, status=400)
        return self._json({"prompts": list(self.prompts.names), **(out or {})})

    async def _prompt_list(self, request):
        if self.prompts is None:
            return self._json({"prompts": None})
        return self._json({"prompts": list(self.prompts.names)})

    async def _prompt_add(self, request):
        def add(data: Dict[str, Any]):
            name = str(data.get("name", "")).strip()
            index = data.get("frame")
            with self._lock:
                image = self._frames.get(int(index)) if index is not None else None
            if image is None:
                raise ValueError(f"frame {index} is no longer held (the last {self._history} are); take a new snapshot")
            self.prompts.add(image, box=data.get("box"), point=data.get("point"), name=name)
            return {"added": name, "frame": int(index)}

        return await self._prompt_call(request, add)

    async def _prompt_remove(self, request):
        name = request.match_info["name"]
        return await self._prompt_call(request, lambda _: {"removed": self.prompts.remove(name)})

    async def _prompt_save(self, request):
        return await self._prompt_call(request, lambda d: {"saved": str(self.prompts.save(str(d.get("file", "")),
                                                                                           bool(d.get("overwrite"))))})

    async def _prompt_load(self, request):
        return await self._prompt_call(request, lambda d: {"loaded": str(self.prompts.load(str(d.get("file", ""))))})

    async def _prompt_files(self, request):
        if self.prompts is None:
            return self._json({"files": []})
        return self._json({"files": self.prompts.files()})
