"""The viewer's loop, one tick at a time, over the two subscriptions it is given (subscriptions.py).

Until the core has named its publishers, each tick drives the session that asks it, and the
window shows whom the viewer waits for. Between ticks it drains both subscriptions as messages
come, so no queue fills up; every tick (TICK_S) it decodes each stream's newest frame, draws
the video grid with its overlays, hands the web board what it shows (feed.py) and shows the
window. A paused or slow viewer therefore
only skips frames here (state.py keeps the newest of each stream), and slows nobody upstream.

The pipeline's stop (``encoders stop``) reaches it as ``Stopped`` on the metrics publisher
(docs/PROTOCOL.md, "Stopping a pipeline from anywhere"): the loop logs it and returns.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import zmq

from encoders.shared import zmqio
from encoders.shared.messages import Stopped, rows_of

from . import layout
from .feed import WebFeed
from .overlay import draw_overlay
from .state import ViewerState
from .subscriptions import Subscriptions
from .window import Window

TICK_S = 1 / 30  # window refresh period
# Messages taken from one socket per drain, so a flood cannot freeze the window.
MAX_DRAIN = 1000

log = logging.getLogger("encoders.viewer")


class Viewer:
    """Frames (and ingests' stats) and the core's records, from the ``subscriptions`` (which may
    still be waiting for the core to name its publishers); shown in the ``window`` and/or handed
    to the web ``feed``, either of which may be None."""

    def __init__(
        self,
        subscriptions: Subscriptions,
        *,
        history: int = 300,
        window: Window | None = None,
        feed: WebFeed | None = None,
    ) -> None:
        self.subscriptions = subscriptions
        self.poller = zmq.Poller()
        self._polled: list[zmq.Socket] = []
        self.window = window
        self.feed = feed
        self.state = ViewerState(history)
        self.images: dict[str, np.ndarray] = {}  # newest decoded frame of each stream
        self.counters: dict[str, int] = {"frames_shown": 0, "bad_jpeg": 0}
        self.stopped: Stopped | None = None  # the pipeline's stop, once the core has published it

    def run(self, stop: threading.Event, on_turn: Callable[[], None] = lambda: None) -> None:
        """Tick until ``stop`` is set, the window asks to stop or the pipeline has stopped.
        ``on_turn``: called each turn (the exporter's beat: /healthz tells a wedged loop)."""
        next_tick = time.monotonic()
        while not stop.is_set() and self.stopped is None:
            on_turn()
            # Between ticks, take messages as they come so no socket queue fills up.
            self._poll(max(0, math.ceil((next_tick - time.monotonic()) * 1000)))
            now = time.monotonic()
            if now < next_tick:
                self.subscriptions.step(now)
                self.drain(now)
                continue
            next_tick = now + TICK_S
            if not self.tick(now):
                return

    def tick(self, now: float) -> bool:
        """Ask the core (until it answered), drain, decode, render, feed the web board, show the window;
        False once the window asks to stop or the pipeline has stopped."""
        self.subscriptions.step(now)
        self.drain(now)
        if self.stopped is not None:
            return False
        # With nobody watching, the newest frames stay untaken (and undecoded) for the next
        # one who does: a paused camera's last frame then shows at once.
        web_video = self.feed is not None and self.feed.wants_video()
        if self.window is None and not web_video:
            video = None
        else:
            decode_new_frames(self.state, self.images, self.counters, now)
            video = render_video(self.state, self.images, self.subscriptions.waiting_lines(), now)
        if self.feed is not None:
            if web_video and video is not None:
                self.feed.put_video(video)
            self.feed.put_state(self.state, now, self.counters, waiting=self.subscriptions.status())
        if self.window is not None and video is not None:
            reason = self.window.show(video, self.state.drift_history(), now)
            if reason:
                log.info("%s", reason)
                return False
        return True

    def drain(self, now: float) -> None:
        """Take every message waiting (up to MAX_DRAIN a socket) into the state and the web feed;
        frames replace older frames."""
        for sock in self.subscriptions.sockets:
            for got in zmqio.receive_waiting(sock, limit=MAX_DRAIN, topic=True, counters=self.counters):
                if isinstance(got, Stopped):
                    self._pipeline_stopped(got)
                    continue
                for msg in rows_of(got):  # a Records: its records, in order, each as one
                    self.state.add(msg)
                    if self.feed is not None:
                        self.feed.on_message(msg, now)

    def _pipeline_stopped(self, msg: Stopped) -> None:
        """The core published that the pipeline has stopped: say so, with each stream's totals; the loop ends."""
        if self.stopped is None:
            said = ", ".join(
                f"{name} {c.get('embedded', '?')}/{'?' if c.get('published') is None else c.get('published')}"
                for name, c in sorted(msg.streams.items())
            )
            log.info("the pipeline has stopped (frames embedded/published: %s): exiting", said or "no streams")
        self.stopped = msg

    def _poll(self, timeout_ms: int) -> None:
        """Wait for a message on what the subscriptions want watched (the set changes once, when the
        core has named its publishers: the session's socket is closed then)."""
        watched = self.subscriptions.poll_sockets()
        if watched != self._polled:
            self.poller = zmq.Poller()
            for sock in watched:
                self.poller.register(sock, zmq.POLLIN)
            self._polled = list(watched)
        self.poller.poll(timeout_ms)

    def all_counters(self) -> dict[str, Any]:
        """What was received, shown and dropped: the final log line's numbers."""
        return {**self.state.counters, **self.counters}


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


def render_video(state: ViewerState, images: dict[str, np.ndarray], waiting: list[str], now: float) -> np.ndarray:
    """Each stream's newest frame with its overlay, in a grid; before any frame, the placeholder
    with the ``waiting`` lines (whom the viewer waits for)."""
    if not images:
        return layout.placeholder(waiting)
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
