"""A live view in the browser: the annotated stream, live stats and the last detections, served by the device.

    server = LiveServer(port=8080, stats=pipeline.stats).start()   # a pipeline sink: Pipeline(..., sinks=[server])
    print(server.url)                                               # http://127.0.0.1:8080/?token=...

Built on aiohttp (asyncio): every browser is one coroutine on the server's own thread, so a slow
or vanished browser only delays itself. The pipeline's sink call is O(1) (it swaps a reference);
frames are drawn and JPEG-encoded lazily, once per new frame that a browser actually asks for,
and each browser always gets the newest frame (never a growing queue).

Endpoints: `/` the page (static files in the package, no CDN); `/stream.mjpg?viewer=ID` the
annotated MJPEG stream; `/api/snapshot` the newest raw frame (header `X-Frame-Index`);
`/api/detections?viewer=ID` the detections of the frame that viewer sees; `/api/stats` FPS,
per-stage latency, dropped frames, counts per class and tracks; `/healthz`. With a prompted
detector: `POST /api/freeze` pins the newest frame for one viewer (returned as JPEG) until its
prompt is added or `POST /api/release`; `GET/POST /api/prompts`, `DELETE /api/prompts/{name}`,
`POST /api/prompts/save|load`, `GET /api/prompts/files`.

Security (runtime.serve.access): binds 127.0.0.1 unless `allow_remote=True` (the CLI's explicit
`--host`, with a warning); beyond loopback, or when a token is given, every endpoint but
`/healthz` needs the token; Host/Origin are checked on every request; request bodies are limited
to 64 KiB; prompt files stay inside one folder. Bounded: at most `max_viewers` streams, a stream
whose browser stops reading for `write_timeout` s is closed, one JPEG encode per frame for all.
"""
from __future__ import annotations

import asyncio
import html
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from runtime.serve.access import AccessGuard, resolve_token
from runtime.serve.frames import RING_BYTES, FrameStore, SharedJpeg
from runtime.serve.prompt_routes import PromptRoutes

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024
BOUNDARY = "edgedetframe"
TRACKS_KEPT = 20000  # track ids remembered to count "tracks seen" (a day of tracking stays bounded)


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


class LiveServer(PromptRoutes):
    """The web view as a pipeline sink. prompts: a `runtime.serve.LivePromptedDetector` to edit
    from the page (None: view only). stats: a callable returning the pipeline's stats dict.
    token: None reads --token-file / $EDGEDET_SERVE_TOKEN (runtime.serve.access), else a random one."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, token: Optional[str] = None, allow_remote: bool = False,
                 prompts: Any = None, stats: Optional[Callable[[], Dict[str, Any]]] = None, jpeg_quality: int = 80,
                 max_fps: float = 30.0, ring_bytes: int = RING_BYTES, title: str = "edgedet", token_file: Optional[str] = None,
                 max_viewers: int = 8, write_timeout: float = 10.0, pin_idle_s: float = 300.0, gone_s: float = 10.0,
                 allowed_hosts: tuple = ()):
        try:
            import aiohttp  # noqa: F401
        except ImportError as e:
            raise ServeError("the live web view needs aiohttp: pip install 'edgedet[serve]' (or pip install aiohttp)") from e
        if not allow_remote and not is_loopback(host):
            raise ServeError(f"refusing to bind {host}: not a loopback address (pass allow_remote=True / --host {host} on purpose)")
        if int(max_viewers) < 1:
            raise ValueError(f"max_viewers must be at least 1, got {max_viewers}")
        self.host, self.port, self.allow_remote = host, int(port), allow_remote
        given, self.token_source = resolve_token(token, token_file)
        self.token = given or secrets.token_urlsafe(16)
        # beyond loopback, or with a token chosen on purpose, the whole view is private
        self.guard = AccessGuard(self.token, host, require_token=bool(given) or not is_loopback(host), allowed_hosts=allowed_hosts)
        self.prompts, self.stats_fn, self.title = prompts, stats, title
        self.min_interval = 1.0 / max(1e-3, float(max_fps))
        self.max_viewers, self.write_timeout = int(max_viewers), float(write_timeout)
        self.store = FrameStore(keep_recent=prompts is not None, ring_bytes=ring_bytes, max_pins=self.max_viewers,
                                pin_idle_s=pin_idle_s, gone_s=gone_s)
        self.jpeg = SharedJpeg(jpeg_quality)
        self._counts: Counter = Counter()
        self._tracks: set = set()  # recent track ids (bounded), for "tracks seen"
        self._tracks_forgotten = 0
        self._published = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._new_frame: Optional[asyncio.Event] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._start_error: Optional[BaseException] = None
        self._runner: Any = None
        self._closing = False
        self.clients = 0  # open streams
        self.closed_slow = 0  # streams closed because their browser stopped reading

    # -- the sink side (pipeline thread) ------------------------------------------------------
    def __call__(self, result: Any) -> None:
        """Pipeline sink: keep a reference to the newest result (O(1)); wake the browsers."""
        self.store.publish(result)
        self._published += 1
        counts = Counter(result.detections.names)
        ids = getattr(result.detections, "track_ids", None)
        self._counts = counts
        if ids is not None:
            self._tracks.update(int(i) for i in np.asarray(ids).ravel() if int(i) >= 0)
            if len(self._tracks) > TRACKS_KEPT:  # trackers number tracks upwards: old ids never come back
                floor = max(self._tracks) - TRACKS_KEPT // 2
                old = {i for i in self._tracks if i < floor}
                self._tracks_forgotten += len(old)
                self._tracks -= old
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
        """The page's URL with its token, as this machine opens it (loopback for a 0.0.0.0 / :: bind)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/?token={self.token}"

    @property
    def lan_url(self) -> Optional[str]:
        """For a 0.0.0.0 / :: bind, the URL other machines open: this host's mDNS name (a Jetson's avahi answers
        it), which the Host check accepts like any of its addresses. None for a bind to one address."""
        if self.host not in ("0.0.0.0", "::", ""):
            return None
        return f"http://{socket.gethostname().lower()}.local:{self.port}/?token={self.token}"

    def announce(self, file: Any = None, suffix: str = "") -> None:
        """Print the URL(s) to open, once at start-up."""
        print(f"live view: {self.url}{suffix}", file=file, flush=True)
        if self.lan_url:
            print(f"  from other machines: {self.lan_url} (or this machine's address in place of the name)", file=file,
                  flush=True)

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
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._guard_middleware()])
        r = app.router
        r.add_get("/", self._index)
        r.add_static("/static/", STATIC)
        r.add_get("/stream.mjpg", self._stream)
        r.add_get("/api/snapshot", self._snapshot)
        r.add_get("/api/detections", self._detections)
        r.add_get("/api/stats", self._stats)
        r.add_get("/healthz", self._health)
        self.add_prompt_routes(r)
        # shutdown_timeout: at close, open streams get 1 s to end (they end at once on _closing).
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # an OS-chosen port: read it back
            self.port = self._runner.addresses[0][1]
        self.guard.cookie = f"edgedet_token_{self.port}"  # cookies ignore ports: one name per server
        self._housekeeping()

    def _housekeeping(self) -> None:
        """Every second on the loop: release pins that timed out or whose viewer left."""
        self.store.expire()
        if not self._closing and self._loop is not None:
            self._loop.call_later(1.0, self._housekeeping)

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

    def _guard_middleware(self):
        from aiohttp import web

        @web.middleware
        async def guard(request, handler):
            needs_token = request.method not in ("GET", "HEAD") or request.path == "/api/prompts/files"
            refused = self.guard.refuse(request, needs_token, token_free=request.path == "/healthz")
            if refused is None:
                return await handler(request)
            status, reason = refused
            if request.path == "/":
                return web.Response(status=status, content_type="text/html", text=_REFUSED_PAGE.format(reason=html.escape(reason)))
            return self._json({"error": reason}, status=status)

        return guard

    @staticmethod
    def _viewer(request, data: Optional[Dict[str, Any]] = None) -> Optional[str]:
        viewer = str((data or {}).get("viewer") or request.query.get("viewer") or "")
        return viewer if viewer and len(viewer) <= 64 and viewer.replace("-", "").replace("_", "").isalnum() else None

    # -- handlers ---------------------------------------------------------------------------------
    async def _index(self, request):
        from aiohttp import web

        resp = web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})
        if request.query.get("token") and self.guard.token_ok(request.query["token"]):
            # the start-up URL's token, kept by the browser for the stream and the API (never readable by scripts)
            resp.set_cookie(self.guard.cookie, self.token, httponly=True, samesite="Strict", path="/")
        return resp

    async def _health(self, request):
        return self._json({"ok": True, "frames": self._published, "clients": self.clients, "prompted": self.prompts is not None})

    async def _stream(self, request):
        from aiohttp import web

        if self.clients >= self.max_viewers:
            return self._json({"error": f"the live view already has {self.clients} viewers, its limit (max_viewers / "
                                        "--max-viewers); close another page or try again later"}, status=503)
        viewer = self._viewer(request) or f"anonymous-{id(request)}"
        resp = web.StreamResponse(headers={"Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                           "Cache-Control": "no-store"})
        self.clients += 1
        self.store.stream_opened(viewer)
        last = -1
        try:
            await resp.prepare(request)
            while not self._closing:
                event = self._new_frame
                if self.store.version == last:
                    try:
                        await asyncio.wait_for(event.wait(), timeout=1.0)
                    except asyncio.TimeoutError:
                        continue
                t0 = time.perf_counter()
                result, version = self.store.newest()
                jpeg = await self.jpeg.get("annotated", version, result) if result is not None else None
                if jpeg is None:
                    await asyncio.sleep(0.01)
                    continue
                last = version
                head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
                        f"X-Frame-Index: {result.frame.index}\r\n\r\n")
                try:  # waits for this browser only, and not for ever
                    await asyncio.wait_for(resp.write(head.encode() + jpeg + b"\r\n"), timeout=self.write_timeout)
                except asyncio.TimeoutError:
                    self.closed_slow += 1
                    log.info("live view: a viewer read nothing for %.0f s; its stream was closed", self.write_timeout)
                    if request.transport is not None:
                        request.transport.abort()
                    break
                self.store.shown(viewer, result)
                await asyncio.sleep(max(0.0, self.min_interval - (time.perf_counter() - t0)))
        except (ConnectionError, asyncio.CancelledError):  # the browser left: nothing to report
            pass
        finally:
            self.clients -= 1
            self.store.stream_closed(viewer)
        return resp

    async def _snapshot(self, request):
        from aiohttp import web

        result, version = self.store.newest()
        jpeg = await self.jpeg.get("raw", version, result) if result is not None else None
        if jpeg is None:
            return self._json({"error": "no frame yet"}, status=503)
        return web.Response(body=jpeg, content_type="image/jpeg",
                            headers={"X-Frame-Index": str(result.frame.index), "Cache-Control": "no-store"})

    async def _detections(self, request):
        result = self.store.on_screen(self._viewer(request))
        if result is None:
            return self._json({"frame": None, "detections": []})
        record = {"frame": result.frame.index, "timestamp": result.frame.timestamp, "latency_ms": result.latency_ms,
                  "frozen": result is self.store.pinned(self._viewer(request), touch=False)}
        record.update(result.detections.to_dict())
        return self._json(record)

    async def _stats(self, request):
        stats = self.stats_fn() if self.stats_fn is not None else {}
        counts, tracks = dict(self._counts), len(self._tracks) + self._tracks_forgotten
        return self._json({"fps": stats.get("fps", 0.0), "frames": stats.get("frames", self._published),
                           "dropped": stats.get("dropped", 0), "latency_ms": stats.get("latency_ms", {}),
                           "counts": counts, "tracks_seen": tracks, "clients": self.clients, "max_viewers": self.max_viewers,
                           "prompts": list(self.prompts.names) if self.prompts is not None else None})


_REFUSED_PAGE = """<!doctype html><meta charset="utf-8"><title>edgedet live: refused</title>
<body style="font:15px system-ui;margin:2em"><h1>edgedet live</h1><p>{reason}</p></body>"""
