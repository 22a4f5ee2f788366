"""The viewer: live video of every stream with its drift overlay, in a window, a web page, or both.

It only subscribes (to the core's frames and to its records and stats), so it can run on any
machine that reaches the core, and a slow or paused viewer slows nobody: it drains its
sockets every tick and keeps only the newest frame of each stream (viewer.py). The core at
--core names its publishers (subscriptions.py) unless --frames and --metrics are given; while
it does not answer, the viewer waits, and says for whom.

- The window (the seed's display, window.py): the video with its overlay and the drift plot
  beside it. Q, q or ESC quits, as does closing the window. With no display it exits 2 at once.
- The web viewer (``--web HOST:PORT``): a page for a browser on any machine; see web/.
  No display is needed unless ``--with-window`` asks for the window too.

SIGTERM and SIGINT end it cleanly too, as does the pipeline's stop (``encoders stop``: the core
publishes it when it has drained; viewer.py); all of these exit 0. A setting it cannot use (no
display, an endpoint that does not parse, a port in use, a core that refuses viewers) exits 2
with one line saying why.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
import sys
import threading
from typing import TYPE_CHECKING, Any

import zmq

from encoders.services.viewer.config import ViewerConfig
from encoders.shared.endpoints import is_loopback_host
from encoders.shared.exporter import Exporter, Families
from encoders.shared.runtime import StartupError, service_main
from encoders.shared.settings import SettingsError

from .feed import WebFeed
from .subscriptions import Subscriptions
from .viewer import Viewer
from .window import NO_DISPLAY, Window, display_problem

if TYPE_CHECKING:
    from .web import WebServer

log = logging.getLogger("encoders.viewer")


def run(cfg: ViewerConfig) -> int:
    return service_main("viewer", cfg, functools.partial(body, cfg))


def body(cfg: ViewerConfig, stop: threading.Event) -> int:
    show_window = not cfg.web or cfg.with_window
    if show_window and (problem := display_problem(os.environ, sys.platform)):
        raise StartupError(f"{NO_DISPLAY} ({problem})")

    exporter = Exporter("viewer")
    ctx = zmq.Context()
    feed: WebFeed | None = None
    server: WebServer | None = None
    window: Window | None = None
    viewer: Viewer | None = None
    try:
        subscriptions = Subscriptions.from_config(ctx, cfg, cfg.frames, cfg.metrics)
        if cfg.web:
            feed, server = start_web(cfg)
        if show_window:
            window = Window(cfg.window, plot=cfg.plot)
            window.open()
            log.info("window %r open", cfg.window)
        viewer = Viewer(subscriptions, history=cfg.history, window=window, feed=feed)
        exporter.collect(functools.partial(viewer_families, viewer, server))
        exporter.start(cfg)
        log.info("%s", subscriptions.describe())
        viewer.run(stop, on_turn=exporter.beat)
        return 0
    finally:
        exporter.stop()
        web_counters: dict[str, Any] = {}
        if server is not None:
            server.stop()
            web_counters = {f"web_{k}": v for k, v in server.webapp.clients.counters().items()}
        ctx.destroy(linger=0)
        if window is not None:
            window.close()
        if viewer is not None:
            log.info("viewer stopped: %s", {**viewer.all_counters(), **web_counters})


def viewer_families(viewer: Viewer, server: WebServer | None, f: Families) -> None:
    """The viewer's counts at a scrape (shared/exporter.py): what it received and showed, its web clients."""
    for key, value in list(viewer.all_counters().items()):
        if isinstance(value, int) and not isinstance(value, bool):
            f.counter(f"encoders_viewer_{key}", f"The viewer's {key.replace('_', ' ')}", value)
    if server is not None:
        web = server.webapp.clients.counters()
        f.gauge("encoders_web_clients", "Web viewer clients connected now (video and events)", web["clients_now"])
        for key in ("refused", "evicted", "token_timeouts", "header_timeouts", "body_timeouts"):
            f.counter(f"encoders_web_{key}", f"Web viewer connections closed: {key.replace('_', ' ')}", web.get(key))


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """The web viewer's TLS: the certificate and key given, the library's defaults for the rest."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def start_web(cfg: ViewerConfig) -> tuple[WebFeed, WebServer]:
    """The web server, listening, and the feed the main loop hands it everything through;
    StartupError if it cannot listen."""
    # aiohttp only here: a window-only viewer does not load it.
    from .latest import Latest
    from .search import TextSearch
    from .web import WebApp, WebServer
    from .web.guard import Door

    board = Latest()
    search = (
        TextSearch(cfg.database_url, cfg.model, cfg.pretrained, cfg.runs_dir, ef_search=cfg.search_ef_text)
        if cfg.database_url
        else None
    )
    try:
        host, port = cfg.web_address()
        tls = tls_context(cfg.web_cert, cfg.web_key) if cfg.web_cert else None
        door = Door(
            max_connections=cfg.web_max_connections,
            header_timeout=cfg.web_header_timeout,
            max_per_client=cfg.web_max_per_client,
            token_timeout=cfg.web_token_timeout,
            body_timeout=cfg.web_body_timeout,
        )
        webapp = WebApp(
            board, token=cfg.web_token, cookie=f"encoders_token_{port}", search=search, secure=bool(tls), door=door
        )
        server = WebServer(webapp, host, port, tls=tls)
        server.start()
    except (OSError, ssl.SSLError, SettingsError) as exc:
        raise StartupError(f"cannot serve the web viewer on {cfg.web}: {exc}") from None
    for address in server.addresses:
        h, p = address[:2]
        url = f"{'https' if tls else 'http'}://{f'[{h}]' if ':' in h else h}:{p}/"
        log.info("web viewer on %s%s", url, "?token=... (the token you set)" if cfg.web_token else "")
    if not tls and not is_loopback_host(host):
        log.warning(
            "the web viewer is plain HTTP beyond this machine: its token and pictures travel in clear. "
            "For anything but a trusted LAN set ENCODERS_WEB_CERT and ENCODERS_WEB_KEY (https)"
        )
    log.info(
        "web search %s", f"on, over {search.model} embeddings in the database" if search else "off (no --database-url)"
    )
    return WebFeed(board, down_after=cfg.stream_down_after), server
