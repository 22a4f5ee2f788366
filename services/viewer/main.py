"""The viewer: live video of every stream with its drift overlay, in a window, a web page, or both.

It only subscribes (to ingest's frames and to metrics' records and stats), so it can run
on any machine that reaches those addresses, and a slow or paused viewer slows nobody: it
drains its sockets every tick and keeps only the newest frame of each stream.

- The window (the seed's display): the video with its overlay and the drift plot beside it.
  Q, q or ESC quits, as does closing the window. With no display it exits 2 at once.
- The web viewer (``--web HOST:PORT``): a page for a browser on any machine; see web.py.
  No display is needed unless ``--with-window`` asks for the window too.

SIGTERM and SIGINT end it cleanly too; all of these exit 0.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time

import cv2
import numpy as np
import zmq

from encoders.services.viewer.config import ViewerConfig
from encoders.shared import zmqio
from encoders.shared.runtime import log_settings, setup_logging, stop_on_signals
from encoders.shared.settings import SettingsError, split_addrs

from . import layout
from .overlay import draw_overlay
from .plot import DriftPlot
from .state import ViewerState

NO_DISPLAY = "no display: run with --no-display, or use X forwarding"
TICK_S = 1 / 30  # window refresh period
QUIT_KEYS = {ord("q"), ord("Q"), 27}  # 27 = ESC
# A few frames of slack: the loop drains every tick, so more would only hold stale frames.
FRAMES_RCVHWM = 8
# Metrics records are small and every one is a point of the plot: keep plenty.
METRICS_RCVHWM = 10_000
# Messages taken from one socket per drain, so a flood cannot freeze the window.
MAX_DRAIN = 1000

log = logging.getLogger("encoders.viewer")


def run(cfg: ViewerConfig) -> int:
    setup_logging("viewer")
    log_settings(log, "viewer", cfg)
    show_window = not cfg.web or cfg.with_window
    problem = display_problem(os.environ, sys.platform) if show_window else None
    if problem:
        log.error("%s (%s)", NO_DISPLAY, problem)
        return 2
    frame_addrs = split_addrs(cfg.frames)
    stop = stop_on_signals()
    state = ViewerState(cfg.history)
    counters: dict[str, int] = {"frames_shown": 0, "bad_jpeg": 0}
    images: dict[str, np.ndarray] = {}  # newest decoded frame of each stream
    plot: DriftPlot | None = None
    feed = server = None

    ctx = zmq.Context()
    try:
        try:
            socks = [
                zmqio.open_socket(
                    ctx,
                    zmq.SUB,
                    frame_addrs,
                    bind=False,
                    rcvhwm=FRAMES_RCVHWM,
                    subscribe=(b"frame/", b"stats/"),
                    linger=0,
                ),
                zmqio.open_socket(
                    ctx,
                    zmq.SUB,
                    cfg.metrics,
                    bind=False,
                    rcvhwm=METRICS_RCVHWM,
                    subscribe=(b"metrics/", b"eos/", b"stats/"),
                    linger=0,
                ),
            ]
        except RuntimeError as exc:  # an address that does not parse
            log.error("%s", exc)
            return 2
        poller = zmq.Poller()
        for s in socks:
            poller.register(s, zmq.POLLIN)
        if cfg.web:
            try:
                feed, server = start_web(cfg)
            except (OSError, SettingsError) as exc:
                log.error("cannot serve the web viewer on %s: %s", cfg.web, exc)
                return 2
        if show_window:
            try:
                cv2.namedWindow(cfg.window, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
            except cv2.error as exc:  # e.g. opencv-python-headless, built without any GUI
                log.error("%s (OpenCV cannot open a window: %s)", NO_DISPLAY, str(exc).strip())
                return 2
            log.info("window %r open", cfg.window)
        log.info("waiting for frames from %s and metrics from %s", ", ".join(frame_addrs), cfg.metrics)

        next_tick = time.monotonic()
        while not stop.is_set():
            # Between ticks, take messages as they come so no socket queue fills up.
            poller.poll(max(0.0, next_tick - time.monotonic()) * 1000)
            for s in socks:
                drain(s, state, counters, feed.on_message if feed else None)
            now = time.monotonic()
            if now < next_tick:
                continue
            next_tick = now + TICK_S

            # With nobody watching, the newest frames stay untaken (and undecoded) for the next
            # one who does: a paused camera's last frame then shows at once.
            web_video = feed is not None and feed.wants_video()
            if show_window or web_video:
                decode_new_frames(state, images, counters, now)
                video = render_video(state, images, frame_addrs, cfg.metrics, now)
            if feed is not None:
                if web_video:
                    feed.put_video(video)
                feed.put_state(state, now, counters)
            if show_window:
                if cfg.plot:
                    size = layout.plot_size(video.shape[0])
                    if plot is None or plot.size != size:
                        plot = DriftPlot(*size)
                    canvas = layout.side_by_side(video, plot.image(state.drift_history(), now))
                else:
                    canvas = video
                cv2.imshow(cfg.window, canvas)
                key = cv2.waitKey(1)
                if key != -1 and (key & 0xFF) in QUIT_KEYS:
                    log.info("quit key pressed")
                    break
                if window_closed(cfg.window):
                    log.info("window closed")
                    break
        return 0
    finally:
        web_counters = {}
        if server is not None:
            server.stop()
            web_counters = {f"web_{k}": v for k, v in server.webapp.clients.counters().items()}
        ctx.destroy(linger=0)
        if show_window:
            cv2.destroyAllWindows()
            cv2.waitKey(1)  # lets the GUI toolkit actually take the window down
        log.info("viewer stopped: %s", {**state.counters, **counters, **web_counters})


def start_web(cfg: ViewerConfig):
    """The web server, listening, and the feed the main loop hands it everything through."""
    # aiohttp only here: a window-only viewer does not load it.
    from .feed import WebFeed
    from .latest import Latest
    from .search import TextSearch
    from .web import WebApp, WebServer

    host, port = cfg.web_address()
    board = Latest()
    search = (
        TextSearch(cfg.database_url, cfg.model, cfg.pretrained, cfg.runs_dir, ef_search=cfg.search_ef_text)
        if cfg.database_url
        else None
    )
    webapp = WebApp(board, token=cfg.web_token, cookie=f"encoders_token_{port}", search=search)
    server = WebServer(webapp, host, port)
    server.start()
    for address in server.addresses:
        h, p = address[:2]
        url = f"http://{f'[{h}]' if ':' in h else h}:{p}/"
        log.info("web viewer on %s%s", url, "?token=... (the token you set)" if cfg.web_token else "")
    log.info(
        "web search %s", f"on, over {search.model} embeddings in the database" if search else "off (no --database-url)"
    )
    return WebFeed(board), server


def drain(sock: zmq.Socket, state: ViewerState, counters: dict, also=None) -> None:
    """Take every message waiting (up to MAX_DRAIN) into ``state`` (and ``also(msg)``); frames
    replace older frames."""
    for msg in zmqio.receive_waiting(sock, limit=MAX_DRAIN, topic=True, counters=counters):
        state.add(msg)
        if also is not None:
            also(msg)


def decode_new_frames(state: ViewerState, images: dict[str, np.ndarray], counters: dict, now: float) -> None:
    """Decode the newest frame of each stream that has a new one (and no other)."""
    for frame in state.take_new_frames(now):
        img = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            counters["bad_jpeg"] += 1
            log.warning(
                "frame %s/%d is not a JPEG OpenCV can decode; keeping the previous one", frame.stream, frame.seq
            )
            continue
        images[frame.stream] = img
        counters["frames_shown"] += 1


def render_video(
    state: ViewerState, images: dict[str, np.ndarray], frame_addrs: list[str], metrics_addr: str, now: float
) -> np.ndarray:
    """Each stream's newest frame with its overlay, in a grid; the placeholder before any frame."""
    if not images:
        return layout.placeholder(frame_addrs, metrics_addr)
    names = sorted(images)
    cell_h, cell_w = images[names[0]].shape[:2]
    tiles = []
    for name in names:
        st = state.streams[name]
        ingest = state.stats.get(("ingest", name))
        tiles.append(
            draw_overlay(
                layout.fit(images[name], cell_w, cell_h),
                name,
                st.metrics,
                st.display_fps.rate(now),
                ended=st.ended,
                fallback_counts=ingest.counters if ingest else None,
            )
        )
    return layout.grid(tiles)


def window_closed(name: str) -> bool:
    try:
        return cv2.getWindowProperty(name, cv2.WND_PROP_VISIBLE) < 1
    except cv2.error:  # the Qt build raises once the window is gone instead of answering 0
        return True


def display_problem(environ, platform: str) -> str | None:
    """Why no window can open here, or None.

    On Linux OpenCV's Qt aborts the whole process (no exception) when it cannot reach the X
    server, so the viewer checks first that DISPLAY is set and its server answers. Done by
    hand because the check is one socket connection and no X library is a dependency.
    """
    if not platform.startswith("linux"):
        return None  # Windows and macOS sessions have a display; OpenCV raises if not
    display = environ.get("DISPLAY", "")
    if not display:
        return "DISPLAY is not set"
    host, _, rest = display.rpartition(":")
    number = rest.split(".")[0]
    if not number.isdigit():
        return f"DISPLAY={display!r} is not of the form [host]:N"
    try:
        if host in ("", "unix"):
            _connect_unix(f"/tmp/.X11-unix/X{number}")
        else:
            socket.create_connection((host, 6000 + int(number)), timeout=2).close()
    except OSError as exc:
        return f"cannot reach the X server of DISPLAY={display}: {exc}"
    return None


def _connect_unix(path: str) -> None:
    # X servers on Linux listen on an abstract socket, a file socket, or both.
    last: OSError | None = None
    for address in ("\0" + path, path):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(2)
            s.connect(address)
            return
        except OSError as exc:
            last = exc
        finally:
            s.close()
    raise last  # type: ignore[misc]
