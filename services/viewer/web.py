"""The web viewer's server: the page, the video as MJPEG, live numbers as Server-Sent Events, JSON.

aiohttp, on a thread and event loop of its own. It reads only the board (latest.py) that the
main loop writes: every client takes the newest value when it is ready for one, so a slow
browser skips frames here, alone, and nothing upstream ever waits for it.

Routes (all GET; with a token set, each needs it: ``?token=``, ``Authorization: Bearer``, or
the cookie the page gets when opened with ``?token=``):

    /                       the page (static/index.html: plain HTML and JS, no build step)
    /video.mjpg             the overlay video, every stream in a grid, as the window shows it
    /video.mjpg?stream=S    stream S's JPEGs exactly as the camera sent them
    /frame.jpg?stream=S     S's newest JPEG
    /events                 Server-Sent Events: 'state' (numbers and new drift points), 'scenes'
    /api/state              the numbers: totals, each stream, the viewer's and web clients' counters
    /api/drift              each stream's rolling drift window: [[t_capture, drift], ...]
    /api/scenes             recent scene changes, newest first, with thumbnail URLs
    /api/scenes/S/N.jpg     a scene change's thumbnail
    /api/search?text=&k=    the frames nearest to a text (with --database-url)
    /api/thumbnail/ID.jpg   a search result's thumbnail
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import socket
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from .feed import SCENES, STATE, VIDEO, raw_key
from .latest import Latest
from .scenes import make_thumbnail
from .search import SearchError, TextSearch
from .snapshot import drift_since, scene_view

log = logging.getLogger("encoders.viewer.web")

STATIC = Path(__file__).with_name("static")
BOUNDARY = "frame"
KEEPALIVE_S = 15.0  # a comment line on idle event streams, so proxies keep them open
# With no new frame for this long, a video client is sent the latest one again: a player
# probing the stream (ffplay) goes on, and a client that has gone shows up as a failed write.
VIDEO_REPEAT_S = 2.0
SHUTDOWN_S = 1.0  # how long a client stuck mid-write may hold up the viewer's exit
THUMBNAILS_KEPT = 256  # search results' thumbnails by id
NO_CACHE = {"Cache-Control": "no-store"}
# The kernel's send buffer of a video connection. Left to autotuning it grows to megabytes: a
# slow client would then be sent frames already minutes old. This keeps a few frames in
# flight, which on a LAN (or loopback) still carries hundreds of MB/s.
VIDEO_SNDBUF = 256 << 10


PART_HEADERS = b"Content-Type: image/jpeg\r\n\r\n"
MJPEG_START = f"--{BOUNDARY}\r\n".encode() + PART_HEADERS


def mjpeg_part(jpeg: bytes) -> bytes:
    """One frame of a multipart/x-mixed-replace stream (which starts with MJPEG_START).

    The frame is followed at once by the next part's boundary and headers: a browser shows a
    part only once the next one has begun, so this shows each frame now rather than when the
    next comes (with a paused camera, never). The next frame's length is not known yet, so
    parts carry no Content-Length; browsers, ffplay and OpenCV find the boundary instead.
    """
    return jpeg + f"\r\n--{BOUNDARY}\r\n".encode() + PART_HEADERS


def sse_event(name: str, data: Any) -> bytes:
    # allow_nan=False: JSON.parse rejects NaN, so a NaN must fail here, loudly, not in the browser.
    return f"event: {name}\ndata: {json.dumps(data, allow_nan=False, separators=(',', ':'))}\n\n".encode()


def token_given(request: web.Request, token: str, cookie: str) -> bool:
    auth = request.headers.get("Authorization", "")
    offered = [
        request.query.get("token", ""),
        request.cookies.get(cookie, ""),
        auth[7:] if auth.startswith("Bearer ") else "",
    ]
    return any(o and hmac.compare_digest(o.encode(), token.encode()) for o in offered)


@dataclass
class Client:
    id: int
    kind: str  # 'video' or 'events'
    what: str  # which video, or 'events'
    peer: str
    key: Any  # what it follows on the board
    transport: Any = None
    started: float = field(default_factory=time.monotonic)
    version: int = 0  # of the last value it was sent
    sent: int = 0
    skipped: int = 0  # values replaced by a newer one before this client could take them

    def take(self, version: int) -> None:
        if self.version:
            self.skipped += version - self.version - 1
        self.version = version
        self.sent += 1

    def skipped_now(self, board: Latest) -> int:
        """Skipped so far, counting those already replaced while it is still busy with an older one."""
        return self.skipped + (max(0, board.get(self.key)[0] - self.version - 1) if self.version else 0)

    def view(self, board: Latest) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "what": self.what,
            "peer": self.peer,
            "sent": self.sent,
            "skipped": self.skipped_now(board),
            "seconds": round(time.monotonic() - self.started, 1),
        }


class Clients:
    """Who is connected, and what each was sent and skipped (the loop's thread only)."""

    def __init__(self, board: Latest) -> None:
        self.board = board
        self._ids = itertools.count(1)
        self.open: dict[int, Client] = {}
        self.closed = {"served": 0, "frames_sent": 0, "frames_skipped": 0, "events_sent": 0, "events_skipped": 0}

    def add(self, kind: str, what: str, key: Any, request: web.Request) -> Client:
        client = Client(next(self._ids), kind, what, request.remote or "?", key, request.transport)
        self.open[client.id] = client
        log.info("web client %d (%s) opened %s %s", client.id, client.peer, kind, what)
        return client

    def remove(self, client: Client) -> None:
        self.open.pop(client.id, None)
        unit = "frames" if client.kind == "video" else "events"
        self.closed["served"] += 1
        self.closed[f"{unit}_sent"] += client.sent
        self.closed[f"{unit}_skipped"] += client.skipped_now(self.board)
        log.info(
            "web client %d (%s) left %s %s after %d %s sent, %d skipped",
            client.id,
            client.peer,
            client.kind,
            client.what,
            client.sent,
            unit,
            client.skipped_now(self.board),
        )

    def cut_off(self) -> None:
        """Drop every connection at once (the server is stopping): one stuck mid-write would
        otherwise hold the exit until the shutdown timeout."""
        for c in list(self.open.values()):
            if c.transport is not None:
                c.transport.abort()

    def counters(self) -> dict[str, Any]:
        out = {"clients_now": len(self.open), **self.closed}
        for c in self.open.values():
            unit = "frames" if c.kind == "video" else "events"
            out[f"{unit}_sent"] += c.sent
            out[f"{unit}_skipped"] += c.skipped_now(self.board)
        return out

    def view(self) -> dict[str, Any]:
        return {**self.counters(), "clients": [c.view(self.board) for c in self.open.values()]}


class Thumbnails:
    """Search results' snapshots by opaque id, so a URL never names a path on this machine."""

    def __init__(self, keep: int = THUMBNAILS_KEPT) -> None:
        self.keep = keep
        self._by_id: OrderedDict[str, list] = OrderedDict()  # id -> [path, thumbnail or None]
        self._ids = itertools.count(1)
        self._id_of: dict[Path, str] = {}

    def add(self, path: Path) -> str:
        tid = self._id_of.get(path)
        if tid is None or tid not in self._by_id:
            tid = f"{next(self._ids)}"
            self._by_id[tid] = [path, None]
            self._id_of[path] = tid
            while len(self._by_id) > self.keep:
                _old_id, (old_path, _) = self._by_id.popitem(last=False)
                self._id_of.pop(old_path, None)
        self._by_id.move_to_end(tid)
        return tid

    def get(self, tid: str) -> list | None:
        return self._by_id.get(tid)


class WebApp:
    """The routes, over the board. Everything here runs on the web server's loop."""

    def __init__(
        self, board: Latest, *, token: str = "", cookie: str = "encoders_token", search: TextSearch | None = None
    ) -> None:
        self.board = board
        self.token = token
        self.cookie = cookie
        self.search = search
        self.clients = Clients(board)
        self.thumbnails = Thumbnails()
        # Searches and thumbnails read disks and databases: never on the loop, and two at most.
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="web-work")

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._check_token])
        app.router.add_get("/", self.index)
        app.router.add_static("/static/", STATIC)
        app.router.add_get("/video.mjpg", self.video)
        app.router.add_get("/frame.jpg", self.frame)
        app.router.add_get("/events", self.events)
        app.router.add_get("/api/state", self.state)
        app.router.add_get("/api/drift", self.drift)
        app.router.add_get("/api/scenes", self.scenes)
        app.router.add_get(r"/api/scenes/{stream}/{seq:\d+}.jpg", self.scene_thumbnail)
        app.router.add_get("/api/search", self.search_text)
        app.router.add_get(r"/api/thumbnail/{id:\d+}.jpg", self.search_thumbnail)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _cleanup(self, _app) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    @web.middleware
    async def _check_token(self, request: web.Request, handler):
        if self.token and not token_given(request, self.token, self.cookie):
            message = "this viewer needs its token: open it as http://HOST:PORT/?token=..."
            if request.path.startswith("/api/"):
                return web.json_response({"error": message}, status=401)
            return web.Response(status=401, text=message + "\n")
        return await handler(request)

    # -- the page ------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        resp = web.FileResponse(STATIC / "index.html", headers=NO_CACHE)
        if self.token and request.query.get("token"):
            # The page's images, events and fetches then carry the token without it in every URL.
            resp.set_cookie(self.cookie, request.query["token"], httponly=True, samesite="Strict", path="/")
        return resp

    # -- streams -------------------------------------------------------------------------------

    async def video(self, request: web.Request) -> web.StreamResponse:
        stream = request.query.get("stream", "")
        key = raw_key(stream) if stream else VIDEO
        resp = web.StreamResponse(
            headers={"Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}", **NO_CACHE}
        )
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, VIDEO_SNDBUF)
        await resp.prepare(request)
        await resp.write(MJPEG_START)
        client = self.clients.add("video", stream or "overlay", key, request)
        try:
            with self.board.follow(key):
                while not self.board.closed:
                    got = await self.board.newer(key, client.version, VIDEO_REPEAT_S)
                    if got is None:  # a paused camera
                        version, jpeg = self.board.get(key)
                        if version:
                            await resp.write(mjpeg_part(jpeg))
                        continue
                    client.take(got[0])
                    await resp.write(mjpeg_part(got[1]))  # waits while this client's socket is full
        except ConnectionError:
            pass  # the client left
        finally:
            self.clients.remove(client)
        return resp

    async def events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no", **NO_CACHE})
        await resp.prepare(request)
        client = self.clients.add("events", "events", STATE, request)
        scenes_version = 0
        drift_sent: dict[str, int] = {}
        try:
            await resp.write(b"retry: 2000\n\n")  # how soon a browser reconnects after losing us
            while not self.board.closed:
                got = await self.board.newer(STATE, client.version, KEEPALIVE_S)
                if got is None:
                    await resp.write(b": keep-alive\n\n")
                    continue
                client.take(got[0])
                snap = got[1]
                await resp.write(
                    sse_event("state", self._state_view(snap, drift=drift_since(snap["drift"], drift_sent)))
                )
                current, scenes = self.board.get(SCENES)
                if current != scenes_version:
                    scenes_version = current
                    await resp.write(sse_event("scenes", self._scenes_view(scenes)))
        except ConnectionError:
            pass
        finally:
            self.clients.remove(client)
        return resp

    async def frame(self, request: web.Request) -> web.Response:
        stream = request.query.get("stream", "")
        if not stream:
            streams = [s["stream"] for s in (self.board.get(STATE)[1] or {}).get("streams", [])]
            if not streams:
                return web.json_response({"error": "no stream yet"}, status=404)
            stream = streams[0]
        version, jpeg = self.board.get(raw_key(stream))
        if not version:
            return web.json_response({"error": f"no frame of stream {stream!r} yet"}, status=404)
        return web.Response(body=jpeg, content_type="image/jpeg", headers=NO_CACHE)

    # -- JSON ----------------------------------------------------------------------------------

    def _state_view(self, snap: dict | None, **extra) -> dict[str, Any]:
        snap = snap or {"streams": [], "totals": {}, "viewer": {}, "history": 0, "drift": {}}
        out = {k: v for k, v in snap.items() if k != "drift"}
        return {**out, "web": self.clients.counters(), "search": self.search is not None, **extra}

    def _scenes_view(self, scenes) -> list[dict[str, Any]]:
        return [scene_view(s, f"api/scenes/{s.stream}/{s.seq}.jpg") for s in scenes or ()]

    async def state(self, request: web.Request) -> web.Response:
        view = self._state_view(self.board.get(STATE)[1])
        view["web"] = self.clients.view()
        return web.json_response(view, headers=NO_CACHE, dumps=_dumps)

    async def drift(self, request: web.Request) -> web.Response:
        snap = self.board.get(STATE)[1] or {"drift": {}}
        return web.json_response(
            {name: d["points"] for name, d in snap["drift"].items()}, headers=NO_CACHE, dumps=_dumps
        )

    async def scenes(self, request: web.Request) -> web.Response:
        return web.json_response(self._scenes_view(self.board.get(SCENES)[1]), headers=NO_CACHE, dumps=_dumps)

    async def scene_thumbnail(self, request: web.Request) -> web.Response:
        stream, seq = request.match_info["stream"], int(request.match_info["seq"])
        for s in self.board.get(SCENES)[1] or ():
            if s.stream == stream and s.seq == seq and s.thumbnail is not None:
                return web.Response(body=s.thumbnail, content_type="image/jpeg")
        return web.json_response(
            {"error": f"no thumbnail of {stream}/{seq} (only recent scene changes are kept)"}, status=404
        )

    async def search_text(self, request: web.Request) -> web.Response:
        if self.search is None:
            return web.json_response(
                {"error": "search is off: start the viewer with --database-url (or ENCODERS_DATABASE_URL)"}, status=404
            )
        text = request.query.get("text", "")
        try:
            k = int(request.query.get("k", "12"))
        except ValueError:
            return web.json_response({"error": "k must be a whole number"}, status=400)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            hits, note = await loop.run_in_executor(self.executor, self.search.search, text, k)
        except SearchError as exc:
            log.warning("search for %r failed: %s", text, exc)
            return web.json_response({"error": str(exc)}, status=503)
        log.info("search for %r: %d result(s) in %.2f s", text, len(hits), time.monotonic() - started)
        results = []
        for h in hits:
            thumb = f"api/thumbnail/{self.thumbnails.add(h.snapshot)}.jpg" if h.snapshot else None
            results.append(
                {
                    "run": h.run,
                    "stream": h.stream,
                    "seq": h.seq,
                    "captured_at": h.captured_at,
                    "similarity": round(h.similarity, 4),
                    "drift": h.drift,
                    "thumbnail": thumb,
                    "thumbnail_seq": h.snapshot_seq,
                }
            )
        return web.json_response({"text": text, "results": results, "note": note}, dumps=_dumps)

    async def search_thumbnail(self, request: web.Request) -> web.Response:
        entry = self.thumbnails.get(request.match_info["id"])
        if entry is None:
            return web.json_response({"error": "unknown thumbnail (search again)"}, status=404)
        if entry[1] is None:
            path = entry[0]
            entry[1] = await asyncio.get_running_loop().run_in_executor(
                self.executor, lambda: make_thumbnail(path.read_bytes()) if path.is_file() else None
            )
        if entry[1] is None:
            return web.json_response({"error": "the snapshot is gone or does not decode"}, status=404)
        return web.Response(body=entry[1], content_type="image/jpeg")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, allow_nan=False)


class WebServer:
    """The WebApp served on host:port from a thread of its own; start() raises if it cannot listen."""

    def __init__(self, webapp: WebApp, host: str, port: int) -> None:
        self.webapp = webapp
        self.host, self.port = host, port
        self.addresses: list = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="web", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise OSError(f"the web server did not start in {timeout:.0f} s")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop_on_loop)
        self._thread.join(SHUTDOWN_S + 5)

    def _stop_on_loop(self) -> None:
        self.webapp.board.close()  # readers waiting for a value return
        self.webapp.clients.cut_off()  # writers waiting on a full socket fail
        self._loop.stop()

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self.webapp.build(), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_S)
        try:
            loop.run_until_complete(self._listen(runner))
        except BaseException as exc:
            self._error = exc
            loop.run_until_complete(runner.cleanup())
            loop.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    async def _listen(self, runner: web.AppRunner) -> None:
        self.webapp.board.attach(asyncio.get_running_loop())
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.addresses = runner.addresses
