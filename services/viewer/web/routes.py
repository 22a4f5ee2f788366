"""The web viewer's routes, over the board (latest.py) that the main loop writes.

Routes (all GET; with a token set, each needs it, see auth.py):

    /                       the page (static/index.html: plain HTML and JS, no build step)
    /static/...             the page's script and style
    /video.mjpg             the overlay video, every stream in a grid, as the window shows it
    /video.mjpg?stream=S    stream S's JPEGs exactly as the camera sent them
    /frame.jpg?stream=S     S's newest JPEG (the first stream's without ?stream=)
    /events                 Server-Sent Events: 'state' (numbers and new drift points), 'scenes'
    /api/state              the numbers: totals, each stream, the viewer's and web clients' counters
    /api/drift              each stream's rolling drift window: [[t_capture, drift], ...] (null: a restart)
    /api/scenes             recent scene changes, newest first, with thumbnail URLs
    /api/scenes/S/N.jpg     a scene change's thumbnail (the one its record carried)
    /api/search             the frames nearest to a text, a stored frame (GET) or a picture (POST), with
                            filters and paging (with --database-url): openapi.py
    /api/openapi.json       the API, as an OpenAPI 3.1 document
    /api/timeline?run=&stream=&since=&until=   drift over that period, with its scene changes and alerts
    /api/frame.jpg?run=&stream=&seq=           a stored frame's picture (a click on the timeline)
    /api/thumbnail/ID.jpg   a search result's thumbnail

Every handler runs on the web server's loop (server.py). Each video or event client takes the
board's newest value when it is ready for one (clients.py counts what it skipped), so a slow
browser skips frames here, alone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from ..feed import SCENES, STATE, VIDEO, raw_key
from ..latest import Latest
from ..search import Query, QueryProblem, SearchError, TextSearch
from ..snapshot import drift_since, scene_view
from .auth import remember_token, token_middleware
from .clients import Clients
from .formats import MJPEG_CONTENT_TYPE, MJPEG_START, json_dumps, mjpeg_part, sse_event
from .guard import Door
from .openapi import MAX_UPLOAD, OPENAPI, parse_search, text_param, whole_param
from .thumbnails import Thumbnails

log = logging.getLogger("encoders.viewer.web")

STATIC = Path(__file__).parent.parent / "static"
NO_CACHE = {"Cache-Control": "no-store"}
KEEPALIVE_S = 15.0  # a comment line on idle event streams, so proxies keep them open
# With no new frame for this long, a video client is sent the latest one again: a player
# probing the stream (ffplay) goes on, and a client that has gone shows up as a failed write.
VIDEO_REPEAT_S = 2.0
# The kernel's send buffer of a video connection. Left to autotuning it grows to megabytes: a
# slow client would then be sent frames already minutes old. This keeps a few frames in
# flight, which on a LAN (or loopback) still carries hundreds of MB/s.
VIDEO_SNDBUF = 256 << 10


class WebApp:
    def __init__(
        self,
        board: Latest,
        *,
        token: str = "",
        cookie: str = "encoders_token",
        search: TextSearch | None = None,
        secure: bool = False,
        door: Door | None = None,
    ) -> None:
        self.board = board
        self.token = token
        self.secure = secure  # served over TLS
        self.cookie = cookie
        self.search = search
        self.door = door or Door(max_connections=64, header_timeout=10.0)  # served by server.py (guard.py)
        self.clients = Clients(board, self.door.counts)
        self.thumbnails = Thumbnails()
        # Searches and thumbnails read disks and databases: never on the loop, and two at most.
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="web-work")

    def build(self) -> web.Application:
        """The aiohttp application: the routes of this module's docstring."""
        # The door watches every request (outermost), and learns which carried the token (after its check).
        middlewares = [self.door.watch, token_middleware(self.token, self.cookie), self.door.vouch]
        app = web.Application(middlewares=middlewares, client_max_size=MAX_UPLOAD)
        app.router.add_get("/", self.index)
        # The page's few files by name, not a folder served: no path from a client ever reaches
        # the filesystem (aiohttp's static folder answered a 5,000-character name with a 500).
        for path in sorted(STATIC.iterdir()):
            app.router.add_get(f"/static/{path.name}", self._static_file(path))
        app.router.add_get("/video.mjpg", self.video)
        app.router.add_get("/frame.jpg", self.frame)
        app.router.add_get("/events", self.events)
        app.router.add_get("/api/state", self.state)
        app.router.add_get("/api/drift", self.drift)
        app.router.add_get("/api/scenes", self.scenes)
        # A seq is at most 19 digits (it is an int64): a longer one is no route, not int() raising.
        app.router.add_get(r"/api/scenes/{stream}/{seq:\d{1,19}}.jpg", self.scene_thumbnail)
        app.router.add_get("/api/search", self.search_text)
        app.router.add_post("/api/search", self.search_text)
        app.router.add_get("/api/openapi.json", self.openapi)
        app.router.add_get("/api/timeline", self.timeline)
        app.router.add_get("/api/frame.jpg", self.stored_frame)
        app.router.add_get(r"/api/thumbnail/{id:\d+}.jpg", self.search_thumbnail)
        app.on_cleanup.append(self._cleanup)
        return app

    @staticmethod
    def _static_file(path: Path):
        async def serve(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(path)

        return serve

    async def _cleanup(self, _app) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- the page ------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        resp = web.FileResponse(STATIC / "index.html", headers=NO_CACHE)
        remember_token(resp, request, self.token, self.cookie, secure=self.secure)
        return resp

    # -- streams -------------------------------------------------------------------------------

    async def video(self, request: web.Request) -> web.StreamResponse:
        stream = request.query.get("stream", "")
        key = raw_key(stream) if stream else VIDEO
        resp = web.StreamResponse(headers={"Content-Type": MJPEG_CONTENT_TYPE, **NO_CACHE})
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, VIDEO_SNDBUF)
        await resp.prepare(request)
        await resp.write(MJPEG_START)
        client = self.clients.add("video", stream or "overlay", key, request.remote or "?", request.transport)
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
        client = self.clients.add("events", "events", STATE, request.remote or "?", request.transport)
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
        snap = snap or {"waiting": None, "streams": [], "totals": {}, "viewer": {}, "history": 0, "drift": {}}
        out = {k: v for k, v in snap.items() if k != "drift"}
        return {**out, "web": self.clients.counters(), "search": self.search is not None, **extra}

    def _scenes_view(self, scenes) -> list[dict[str, Any]]:
        return [scene_view(s, f"api/scenes/{s.stream}/{s.seq}.jpg") for s in scenes or ()]

    async def state(self, request: web.Request) -> web.Response:
        view = self._state_view(self.board.get(STATE)[1])
        view["web"] = self.clients.view()
        return web.json_response(view, headers=NO_CACHE, dumps=json_dumps)

    async def drift(self, request: web.Request) -> web.Response:
        snap = self.board.get(STATE)[1] or {"drift": {}}
        return web.json_response(
            {name: d["points"] for name, d in snap["drift"].items()}, headers=NO_CACHE, dumps=json_dumps
        )

    async def scenes(self, request: web.Request) -> web.Response:
        return web.json_response(self._scenes_view(self.board.get(SCENES)[1]), headers=NO_CACHE, dumps=json_dumps)

    async def scene_thumbnail(self, request: web.Request) -> web.Response:
        stream, seq = request.match_info["stream"], int(request.match_info["seq"])
        for s in self.board.get(SCENES)[1] or ():
            if s.stream == stream and s.seq == seq and s.thumbnail is not None:
                # Made by a worker: checked to decode (scenes.py), and never sniffed as anything else.
                return web.Response(
                    body=s.thumbnail, content_type="image/jpeg", headers={"X-Content-Type-Options": "nosniff"}
                )
        return web.json_response(
            {"error": f"no thumbnail of {stream}/{seq} (only recent scene changes are kept)"}, status=404
        )

    async def search_text(self, request: web.Request) -> web.Response:
        """GET (a sentence or a stored frame) or POST (an uploaded picture): the API of openapi.py."""
        if self.search is None:
            return web.json_response(
                {"error": "search is off: start the viewer with --database-url (or ENCODERS_DATABASE_URL)"}, status=404
            )
        image = None
        if request.method == "POST":
            form = await request.post()
            upload = form.get("image")
            if not isinstance(upload, web.FileField):
                return web.json_response({"error": "POST a picture as the form field 'image'"}, status=400)
            image = upload.file.read()
        try:
            query, k, offset, min_similarity = parse_search(request.query, image)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        what = query.text or query.frame or f"a picture of {len(image or b'')} bytes"
        find = functools.partial(self.search.find, query, k=k, offset=offset, min_similarity=min_similarity)
        try:
            hits, note = await loop.run_in_executor(self.executor, find)
        except QueryProblem as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except SearchError as exc:
            log.warning("search for %r failed: %s", what, exc)
            return web.json_response({"error": str(exc)}, status=503)
        log.info("search for %r: %d result(s) in %.2f s", what, len(hits), time.monotonic() - started)
        # The one JSON shape of a hit (as `encoders search --format json`), with URLs for its pictures:
        # a path on this machine means nothing to a browser elsewhere, nor should it see one.
        results = []
        for h in hits:
            snapshot = f"api/thumbnail/{self.thumbnails.add(Path(h.snapshot))}.jpg" if h.snapshot else None
            thumbnail = None
            if h.thumbnail_jpeg:  # the hit's own stored picture (or its keyframe's), not a snapshot seconds away
                thumbnail = (
                    f"api/thumbnail/{self.thumbnails.add_stored((h.run_id, h.stream, h.seq), h.thumbnail_jpeg)}.jpg"
                )
            results.append({**h.to_json(), "snapshot": snapshot, "thumbnail": thumbnail})
        body = {"text": query.text, "results": results, "note": note, "k": k, "offset": offset}
        return web.json_response(body, dumps=json_dumps)

    async def timeline(self, request: web.Request) -> web.Response:
        """Drift over a chosen period (run, stream, since, until), with its scene changes and alerts."""
        if self.search is None:
            return web.json_response({"error": "the timeline needs the database: --database-url"}, status=404)
        params = request.query
        try:
            scope = Query(
                run=text_param(params, "run", 256),
                stream=text_param(params, "stream", 64),
                since=text_param(params, "since", 64),
                until=text_param(params, "until", 64),
            )
            points = whole_param(params, "points", 600, 10, 5000)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        try:
            body = await asyncio.get_running_loop().run_in_executor(self.executor, self.search.timeline, scope, points)
        except QueryProblem as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except SearchError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response(body, dumps=json_dumps)

    async def stored_frame(self, request: web.Request) -> web.Response:
        """A stored frame's picture (its thumbnail, or its keyframe's): what a click on the timeline opens."""
        if self.search is None:
            return web.json_response({"error": "stored frames need the database: --database-url"}, status=404)
        params = request.query
        try:
            run, stream = text_param(params, "run", 256), text_param(params, "stream", 64)
            seq = whole_param(params, "seq", None, 0, 2**63 - 1)
        except ValueError as exc:
            return web.json_response({"error": f"give run, stream and seq (a whole number): {exc}"}, status=400)
        if not run or not stream:
            return web.json_response({"error": "give run, stream and seq (a whole number)"}, status=400)
        try:
            jpeg = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.search.frame_thumbnail, run, stream, seq
            )
        except SearchError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        if jpeg is None:
            return web.json_response({"error": f"no stored picture of {stream} #{seq} in run {run}"}, status=404)
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"X-Content-Type-Options": "nosniff"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    async def search_thumbnail(self, request: web.Request) -> web.Response:
        thumbnail = self.thumbnails.get(request.match_info["id"])
        if thumbnail is None:
            return web.json_response({"error": "unknown thumbnail (search again)"}, status=404)
        jpeg = thumbnail.jpeg
        if jpeg is None:
            jpeg = await asyncio.get_running_loop().run_in_executor(self.executor, thumbnail.make)
        if jpeg is None:
            return web.json_response({"error": "the snapshot is gone or does not decode"}, status=404)
        return web.Response(body=jpeg, content_type="image/jpeg")
