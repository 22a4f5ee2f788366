"""A video camera (RTSP, raw H.264 over TCP) or a video file, decoded with PyAV: pictures for the reader.

What the reader thread (reader.py) reads: ``frames()`` runs until stopped, reconnecting with
backoff; ``counters`` (the MJPEG source's keys, http_source.py, and
``decoded``, ``sampled_out``, ``clock_resets``, ``abandoned``); ``end_reason``,
``ever_connected``, ``interrupt()``. It yields ``Picture``s, which the reader compresses to
JPEG: the wire is unchanged.

**The watchdog.** Each connection runs in a thread of its own (av_connection.py); ``frames()``
waits on it, and looks at its progress whenever nothing came for a tenth of a second:

- not connected within connect_timeout + read_timeout (the open reads the first packets too),
- no packet for ``read_timeout`` (a camera that stops sending without closing),
- packets but no frame decoded or sampled for ``stall_after`` (bytes trickling in),

are stalls: counted (``stalls``), said as the MJPEG source says them, and the connection is
reconnected. PyAV's own timeouts usually end such a connection first; where they do not
(PyAV#584, #1243, #1257), the watchdog walks away from the thread and opens a new connection.
The thread it left gets out at its next chance (it owns its container: nothing is closed under
it). Threads that never get out are counted (``abandoned``); past ``MAX_STUCK`` at once the
source ends as failed, so that a supervisor restarts the process rather than it leaking.

Files: played at their own rate (capture times are the file's, from the start of play) or as
fast as the pipeline takes them (``file_rate=fast``: arrival times), looped with ``loop``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Generator

from encoders.shared.masking import mask

from .av_connection import Connection, Ended, Playback
from .av_inputs import Input, open_input
from .capture_clock import CaptureClock, Pacer
from .errors import Stalled, StreamError, UnusableStream
from .pictures import Picture
from .sampling import Sampler
from .urls import Kind, kind_of

log = logging.getLogger("encoders.ingest")

BACKOFF_START = 0.5  # seconds before the first reconnection attempt; doubles up to reconnect_max
WATCH_EVERY = 0.1  # seconds: how often the watchdog looks while nothing comes
LET_GO_WAIT = 1.0  # seconds a connection walked away from may take to get out before it counts as stuck
MAX_STUCK = 4  # connections left blocked in FFmpeg at once before the source gives up (a restart frees them)
COUNTERS = (
    "connects",
    "reconnects",
    "bytes",
    "parts",
    "corrupt",
    "truncated",
    "oversized",
    "stalls",
    "decoded",
    "sampled_out",
    "clock_resets",
    "abandoned",
)


class AvSource:
    def __init__(self, url: str, cfg, stop: threading.Event | None = None, *, deadline: float | None = None) -> None:
        self.kind: Kind = kind_of(url)
        if self.kind == "mjpeg":
            raise ValueError("an MJPEG URL is read by http_source.HttpMjpegSource")
        self.url, self.shown = url, mask(url)
        self.cfg = cfg
        self.stop = stop if stop is not None else threading.Event()
        self.deadline = deadline  # time.monotonic() by which a picture must have come (--test)
        self.reconnect = cfg.reconnect and not (self.kind == "file" and not cfg.loop)
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.end_reason = ""
        self.end_unusable = False
        self.ever_connected = False
        self.sampler = Sampler(cfg.sample_fps, keyframes_only=cfg.keyframes_only)
        self.clock = CaptureClock(max_drift=cfg.max_clock_drift)
        paced = self.kind == "file" and cfg.file_rate == "native"
        self.playback = Playback(
            codecs=cfg.codec_names,
            paced=paced,
            live_clock=self.kind != "file",
            clock=self.clock,
            pacer=Pacer(self.stop.wait) if paced else None,
            sampler=self.sampler,
            read_timeout=cfg.read_timeout,
        )
        self._current: Connection | None = None
        self._stuck: list[Connection] = []
        self._frame_time = 1 / 30
        self.codec = ""  # the stream's, once connected

    @classmethod
    def from_config(cls, cfg, stop: threading.Event | None = None) -> AvSource:
        return cls(cfg.stream, cfg, stop)

    # -- the contract -----------------------------------------------------------------------------

    def frames(self) -> Generator[Picture, None, None]:
        first_delay = min(BACKOFF_START, self.cfg.reconnect_max)
        delay, attempt = first_delay, 0
        self._replay = False  # the next connection plays a file again (not a reconnection)
        while not self.stop.is_set():
            if attempt:
                log.info("reconnecting to %s in %.1f s (attempt %d)", self.shown, delay, attempt)
                if self.stop.wait(delay):
                    break
                delay = min(delay * 2, self.cfg.reconnect_max)
            delivered = False
            try:
                for picture in self._connection(attempt):
                    if not delivered:
                        delivered, delay, attempt = True, first_delay, 0
                    yield picture
                reason = "the file ended" if self.kind == "file" else "the server ended the stream"
            except StreamError as exc:
                reason = str(exc)
                self.end_unusable = isinstance(exc, UnusableStream)
                if isinstance(exc, Fatal):
                    self.end_reason = reason
                    log.error("stream %s: %s", self.shown, reason)
                    return
            if self.stop.is_set():
                break
            self.end_reason = reason
            if self.kind == "file" and reason == "the file ended" and not delivered:
                self.end_reason, self.end_unusable = "the file holds no picture", True
                log.error("stream %s: %s", self.shown, self.end_reason)
                return
            if self.kind == "file" and reason == "the file ended" and self.cfg.loop:
                log.debug("%s: the end; playing it again from the start", self.shown)
                if self.playback.pacer is not None:
                    self.playback.pacer.next_play(self._frame_time)
                self._replay = True
                continue
            (log.info if reason == "the file ended" else log.warning)("stream %s: %s", self.shown, reason)
            if not self.reconnect:
                log.info(
                    "not reconnecting (%s): the stream has ended",
                    "a file" if self.kind == "file" else "reconnect is off",
                )
                return
            attempt += 1
        self.end_reason = "stopped"

    def interrupt(self) -> None:
        """Let go of the camera now (called from another thread after setting ``stop``)."""
        conn = self._current
        if conn is not None:
            conn.abandon()

    # -- one connection ---------------------------------------------------------------------------

    def _open(self) -> Input:
        cfg = self.cfg
        return open_input(
            self.kind,
            self.url,
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            transport=cfg.rtsp_transport,
        )

    def _connection(self, attempt: int) -> Generator[Picture, None, None]:
        self._reap()
        self.clock.restart()
        self.sampler.restart()
        conn = Connection(self._open, self.playback, self.counters)
        self._current = conn
        conn.start()
        announced = False
        try:
            while True:
                try:
                    item = conn.queue.get(timeout=WATCH_EVERY)
                except queue.Empty:
                    if self.stop.is_set():
                        return
                    if not announced and conn.opened.is_set():
                        announced = self._connected(conn, attempt)
                    self._watch(conn)
                    continue
                if not announced:
                    announced = self._connected(conn, attempt)
                if isinstance(item, Ended):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            self._current = None
            conn.abandon()
            if not self.stop.is_set():
                conn.thread.join(LET_GO_WAIT)
                if conn.thread.is_alive():
                    self.counters["abandoned"] += 1
                    self._stuck.append(conn)
                    log.warning("stream %s: left behind a connection blocked in FFmpeg (it ends by itself)", self.shown)

    def _connected(self, conn: Connection, attempt: int) -> bool:
        if not conn.opened.is_set():
            return False
        self.counters["connects"] += 1
        replay, self._replay = self._replay, False
        if self.ever_connected and not replay:
            self.counters["reconnects"] += 1
        self.ever_connected = True
        if conn.input is not None:
            self._frame_time, self.codec = conn.input.frame_time, conn.input.codec
        what = conn.description
        if replay:
            log.debug("playing %s again", self.shown)
        elif attempt:
            log.info("reconnected to %s (attempt %d, %s)", self.shown, attempt, what)
        else:
            log.info("connected to %s (%s)", self.shown, what)
        return True

    def _watch(self, conn: Connection) -> None:
        """The watchdog's look at a connection that has given nothing for a while: StreamError if stalled."""
        cfg, now = self.cfg, time.monotonic()
        if self.deadline is not None and now > self.deadline:
            raise StreamError(f"no picture within {cfg.connect_timeout + cfg.read_timeout:g} s")
        if not conn.opened.is_set():
            if now - conn.started > cfg.connect_timeout + cfg.read_timeout:
                self._stalled(conn)
                raise StreamError(f"no answer within {cfg.connect_timeout + cfg.read_timeout:g} s (connect timeout)")
            return
        if now < conn.busy_until:
            return  # a file's next frame is not due yet
        idle = now - max(conn.packet_at, conn.busy_until)
        if idle > cfg.read_timeout:
            self._stalled(conn)
            raise Stalled.no_data(cfg.read_timeout)
        quiet = now - max(conn.frame_at, conn.busy_until)
        if quiet > cfg.stall_after:
            self._stalled(conn)
            raise StreamError(
                f"stalled: {quiet:.0f} s without a complete frame (ENCODERS_STALL_AFTER={cfg.stall_after:g})"
            )

    def _stalled(self, conn: Connection) -> None:
        self.counters["stalls"] += 1
        conn.abandon()

    def _reap(self) -> None:
        """Forget the left-behind connections that got out; fail if too many never do."""
        self._stuck = [c for c in self._stuck if c.thread.is_alive()]
        if len(self._stuck) >= MAX_STUCK:
            raise Fatal(
                f"{len(self._stuck)} connections are stuck in the decoder and do not let go: ending the stream "
                "(a restart of the ingest frees them)"
            )


class Fatal(StreamError):
    """The source cannot go on in this process."""
