"""The HTTP side of pisim: ``/stream.mjpg`` and ``/health``, as the Pi serves them.

Built on the stdlib's ``http.server.ThreadingHTTPServer``: well kept, no dependency, and
one thread per client is what an MJPEG server needs (each client blocks in its own
write loop at its own pace).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from .sources import open_source

log = logging.getLogger("encoders.pisim")

BOUNDARY = b"FRAME"
CONTENT_TYPE = "multipart/x-mixed-replace; boundary=FRAME"
CLIENT_TIMEOUT = 10.0  # a client that takes nothing for this long is let go


class PisimServer(ThreadingHTTPServer):
    """The server, with the source it serves and its counters."""

    daemon_threads = True

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.source = open_source(cfg)
        self.closing = threading.Event()  # set by close(): every client loop ends
        self.frames_served = 0
        self.clients = 0
        self.clients_served = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._serving: threading.Thread | None = None
        self._in_loop = False
        if ":" in cfg.host:
            self.address_family = socket.AF_INET6
        super().__init__((cfg.host, cfg.port), StreamHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def base_url(self) -> str:
        """http://host:port for a client on this machine (a wildcard host becomes loopback)."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.cfg.host, self.cfg.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> str:
        """Serve from a background thread; returns the base URL."""
        self._in_loop = True  # already, so that a shutdown() right away still stops the loop
        # A short poll interval: shutdown() waits up to one interval for the loop to notice.
        self._serving = threading.Thread(target=self.serve_forever, args=(0.05,), name="pisim-http", daemon=True)
        self._serving.start()
        return self.base_url

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._in_loop = True
        try:
            super().serve_forever(poll_interval)
        finally:
            self._in_loop = False

    def shutdown(self) -> None:
        """Stop serving and end every client's stream (the port stays bound until close())."""
        self.closing.set()
        if self._in_loop:  # the base class would wait forever for a loop that is not running
            super().shutdown()
        if self._serving is not None:
            self._serving.join()
            self._serving = None

    def close(self) -> None:
        """Stop serving, end every client's stream, release the port."""
        self.shutdown()
        self.server_close()  # joins the client threads, which end within a frame

    def health(self) -> dict:
        with self._lock:
            return {
                "status": "ok",
                "source": self.source.description,
                "size": f"{self.cfg.width}x{self.cfg.height}",
                "width": self.cfg.width,
                "height": self.cfg.height,
                "fps": self.cfg.fps,
                "quality": self.cfg.quality,
                "max_frames": self.cfg.max_frames,
                "frames_served": self.frames_served,
                "clients": self.clients,
                "clients_served": self.clients_served,
                "uptime_s": round(time.monotonic() - self.started, 1),
            }

    def _count(self, frames: int = 0, clients: int = 0) -> None:
        with self._lock:
            self.frames_served += frames
            self.clients += clients
            if clients > 0:
                self.clients_served += clients


class StreamHandler(BaseHTTPRequestHandler):
    server: PisimServer
    protocol_version = "HTTP/1.0"  # the stream ends when the connection closes
    server_version = "pisim/1.0"
    timeout = CLIENT_TIMEOUT

    def do_GET(self) -> None:  # http.server's naming
        path = urlsplit(self.path).path
        # "/" streams too: the base URL alone works as a stream URL, and a browser shows it.
        if path in ("/stream.mjpg", "/"):
            self._stream()
        elif path == "/health":
            self._send(200, "application/json", json.dumps(self.server.health()).encode())
        else:
            self.send_error(404, "Not found: try /stream.mjpg or /health")

    def log_message(self, format: str, *args) -> None:  # the base class's parameter name
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        server, cfg = self.server, self.server.cfg
        self.send_response(200)
        self.send_header("Age", "0")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Pragma", "no-cache")
        self.send_header("Content-Type", CONTENT_TYPE)
        self.end_headers()
        client = self.address_string() + f":{self.client_address[1]}"
        server._count(clients=1)
        log.info("client %s connected to /stream.mjpg", client)
        sent = 0
        why = "server closing"
        frames = server.source.frames()  # this client's own sequence
        try:
            start = time.monotonic()
            for jpeg in frames:
                if cfg.fps > 0:
                    delay = start + sent / cfg.fps - time.monotonic()
                    if delay > 0:
                        if server.closing.wait(delay):
                            break
                    elif delay < -1.0:  # fell behind (a slow reader): carry on, don't burst
                        start = time.monotonic() - sent / cfg.fps
                if server.closing.is_set():
                    break
                self.wfile.write(
                    b"".join(
                        (
                            b"--",
                            BOUNDARY,
                            b"\r\nContent-Type: image/jpeg\r\nContent-Length: ",
                            str(len(jpeg)).encode(),
                            b"\r\n\r\n",
                            jpeg,
                            b"\r\n",
                        )
                    )
                )
                sent += 1
                server._count(frames=1)
                if cfg.max_frames and sent >= cfg.max_frames:
                    self.wfile.write(b"--" + BOUNDARY + b"--\r\n")
                    why = f"max_frames ({cfg.max_frames}) reached"
                    break
            else:
                why = "the source ended"
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as exc:
            why = f"client gone ({type(exc).__name__})"
        finally:
            frames.close()
            server._count(clients=-1)
            log.info("client %s: stream ended after %d frames: %s", client, sent, why)


def make_server(cfg) -> PisimServer:
    """A server bound to cfg.host:cfg.port (0 = a free port), not yet serving. SourceError if the source is bad."""
    return PisimServer(cfg)


def serve_in_thread(cfg) -> tuple[PisimServer, str]:
    """Start a server in a background thread: (server, base URL). Stop it with ``server.close()``."""
    server = make_server(cfg)
    return server, server.start()
