"""The web viewer's server thread: the WebApp (routes.py) served by aiohttp on an event loop of its own.

The main loop never waits for it: it only writes the board (latest.py), which this loop's
clients read. start() returns once the server listens, or raises why it cannot (a port in
use); stop() ends every connection at once and waits at most SHUTDOWN_S for a client stuck
mid-write, so a browser can never hold up the viewer's exit.
"""

from __future__ import annotations

import asyncio
import ssl
import threading

from aiohttp import web

from .guard import guarded
from .routes import WebApp

SHUTDOWN_S = 1.0  # how long a client stuck mid-write may hold up the viewer's exit


class WebServer:
    """``tls``: an SSL context (ENCODERS_WEB_CERT/KEY) or None for plain HTTP. Every connection
    goes through the app's door (its caps and deadlines: guard.py)."""

    def __init__(self, webapp: WebApp, host: str, port: int, *, tls: ssl.SSLContext | None = None) -> None:
        self.webapp = webapp
        self.host, self.port = host, port
        self.door = webapp.door
        self.tls = tls
        self.addresses: list = []  # where it listens, once started (port 0 resolved)
        self._server: asyncio.Server | None = None
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
            self._loop.call_soon_threadsafe(self._stop_on_loop, self._loop)
        self._thread.join(SHUTDOWN_S + 5)

    def _stop_on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._server is not None:
            self._server.close()  # no new connections
        self.webapp.board.close()  # readers waiting for a value return
        self.webapp.clients.cut_off()  # writers waiting on a full socket fail
        loop.stop()

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
        loop = asyncio.get_running_loop()
        self.webapp.board.attach(loop)
        await runner.setup()
        # As aiohttp's TCPSite, with each connection behind the door (guard.py). The TLS
        # handshake gets the header timeout too: a client that stalls in it is also dropped.
        assert runner.server is not None
        self._server = await loop.create_server(
            guarded(runner.server, self.door, loop),
            self.host or None,
            self.port,
            ssl=self.tls,
            ssl_handshake_timeout=self.door.header_timeout if self.tls else None,
            reuse_address=True,
        )
        self.addresses = [sock.getsockname() for sock in self._server.sockets]
