"""One camera stream as the main thread serves it: its session with the core, captures, counters, the end.

``Ingest`` opens its session with the core (shared/session.py) on the context it is given
and is handed the camera reader (reader.py); everything here runs in the main thread
(ZeroMQ sockets are not thread-safe). Each ``step`` takes what the core sent (Welcome,
Credit, Stop), takes the next frame from the reader when ``delivery.py`` may send it, sends
it as a ``Capture``, and once a second tells the core the stream's counters (``Stats``).
The core numbers frames, hands them to workers and publishes them (docs/PROTOCOL.md).

The reader starts once the core has welcomed the session (or after the session's timeout
without an answer, so that a camera that fails is still noticed): a core that is up gets
the stream from its first frame.

At the end (the camera's stream ended, max_frames, a signal, or a Stop from the core),
``finish`` sends the final Stats, ``CaptureEnded`` with the camera's counts, and ``Bye``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

import zmq

from encoders.services.ingest.config import IngestConfig
from encoders.shared.complaints import Complaints
from encoders.shared.masking import mask
from encoders.shared.messages import (
    PROTOCOL,
    TEXT_MAX,
    Capture,
    CaptureEnded,
    Credit,
    FrameCounts,
    Hello,
    Stats,
    Stop,
    Welcome,
)
from encoders.shared.session import CoreSession, SessionRefused, process_name

from .delivery import Delivery
from .pictures import JpegFrame
from .reader import CameraReader

log = logging.getLogger("encoders.ingest")
complain = Complaints(log, "the stream's Stats")  # bad input: logged once, then counted

STATS_EVERY = 1.0  # seconds between Stats messages
LOG_EVERY = 10.0  # seconds between summary log lines
POLL_MS = 100
# Captures queued for the core before one is counted undelivered (real time): ~4 MB at
# 640x480, a few seconds of a camera; a core that far behind gets the newest frames.
SNDHWM = 100
END_WAIT = 2.0  # how long the end of the stream may wait for room on the socket

# A video source's own counts (av_source.py), in Stats when the source keeps them.
VIDEO_COUNTS = ("decoded", "sampled_out", "clock_resets", "abandoned")

# Why the loop ended: a signal, a Stop from the core, max_frames, the camera's stream ended
# (reconnect off), the camera never answered, the core refused the session, a crash.
OUTCOMES = ("stopped", "stop", "max_frames", "ended", "failed", "refused", "crashed")


class Ingest:
    """The main thread's state: the session, what is delivered, the counters.

    ``camera`` is the source's counters (corrupt, reconnects, truncated, bytes...), which the
    reader thread updates in place; they are only read here.
    """

    def __init__(self, cfg: IngestConfig, ctx: zmq.Context, reader: CameraReader, camera: Mapping[str, int]) -> None:
        self.cfg = cfg
        self.stream = cfg.stream_id
        self.reader, self.camera = reader, camera
        self.delivery = Delivery(cfg.lossless)
        self.counts = dict.fromkeys(("bad_messages", "unexpected_messages", "stats_unsent"), 0)
        self.session = CoreSession.from_settings(
            ctx,
            cfg,
            "ingest",
            self.hello,
            on_join=self._joined,
            on_lost=self.delivery.lose,
            counters=self.counts,
            sndhwm=SNDHWM,
        )
        self.poller = zmq.Poller()
        self.poller.register(self.session.sock, zmq.POLLIN)
        self.poller.register(reader.inbox, 0)
        self._watching = False  # the reader's inbox is polled
        self.reader_started = False
        self.stop_reason: str | None = None  # the core's Stop
        self.end_detail = ""  # why the camera's stream ended, in words
        self.started = time.monotonic()
        self._start_reader_by = 0.0
        self._next_stats = self._next_log = 0.0
        self._rate = (self.started, 0, 0.0)  # (when, frames read then, frames per second since)
        self._closed = False

    # -- the session ---------------------------------------------------------------------------

    def hello(self) -> Hello:
        self.delivery.source_left_out(self.camera.get("sampled_out", 0))
        return Hello(
            "ingest",
            process_name(),
            PROTOCOL,
            stream=self.stream,
            url=mask(self.cfg.stream)[:TEXT_MAX],
            lossless=self.cfg.lossless,
            undelivered=self.delivery.hello(),
            sent=self.delivery.session_sent,
            after=self.delivery.core,
        )

    def _joined(self, welcome: Welcome) -> None:
        self.delivery.join(welcome.credit, welcome.core)
        if self.cfg.lossless:
            log.info("stream %r: the core takes captures, %d credit to start with", self.stream, welcome.credit)
        else:
            log.info("stream %r: the core takes captures", self.stream)

    def start(self) -> None:
        """Say Hello; the reader starts once the core answers, or after the session's timeout."""
        now = time.monotonic()
        self.session.start(now)
        self._start_reader_by = now + self.session.timeout_s
        self._next_stats, self._next_log = now + STATS_EVERY, now + LOG_EVERY

    # -- the loop -------------------------------------------------------------------------------

    def loop(self, stop: threading.Event) -> str:
        """Steps (after ``start``) until one ends the stream, or ``stop`` is set. Returns one of OUTCOMES."""
        try:
            while not stop.is_set():
                outcome = self.step(POLL_MS)
                if outcome is not None:
                    return outcome
        except SessionRefused as exc:
            log.error("%s", exc)
            return "refused"
        return "stopped"

    def step(self, timeout_ms: int) -> str | None:
        """One turn: the core's messages, the next frame, the heartbeat and the counters. An outcome ends it."""
        self._watch_reader()
        events = dict(self.poller.poll(timeout_ms))
        now = time.monotonic()
        if self.session.sock in events:
            self._from_core(now)
        if self.stop_reason is not None:
            return "stop"
        if not self.reader_started and (self.session.joined or now >= self._start_reader_by):
            self.reader.start()
            self.reader_started = True
        self._deliver(now)
        if self.reader.inbox in events and self._taking():
            event = self.reader.receive()
            if isinstance(event, JpegFrame):
                self.delivery.add(event)
                self._deliver(now)
            elif event.outcome != "stopped":
                self.end_detail = event.reason or event.outcome
                log.info("the camera stream has ended (%s)", self.end_detail)
                return event.outcome
        if self._max_reached() and self.delivery.pending is None:
            log.info("read %d frames (max_frames): stopping", self.delivery.read)
            return "max_frames"
        self.session.tick(now)
        if now >= self._next_stats:
            self._next_stats = now + STATS_EVERY
            self._measure_rate(now)
            self._send_stats(now)
        if now >= self._next_log:
            self._next_log = now + LOG_EVERY
            log.info("%s", self.summary())
        return None

    def _taking(self) -> bool:
        return self.reader_started and self.delivery.accepting and not self._max_reached()

    def _max_reached(self) -> bool:
        return bool(self.cfg.max_frames) and self.delivery.read >= self.cfg.max_frames

    def _watch_reader(self) -> None:
        """Poll the reader's inbox only while a frame may be taken (lossless: the reader then blocks)."""
        if self._taking() != self._watching:
            self._watching = not self._watching
            self.poller.modify(self.reader.inbox, zmq.POLLIN if self._watching else 0)

    def _from_core(self, now: float) -> None:
        for msg in self.session.take(now):
            if isinstance(msg, Credit):
                self.delivery.add_credit(msg.n)
            elif isinstance(msg, Stop):
                self.stop_reason = msg.reason or "no reason given"
                log.info("the core asks this stream to stop (%s)", self.stop_reason)
            else:
                self.counts["unexpected_messages"] += 1
                complain(
                    "unexpected_messages",
                    "ignored a %s message from the core (an ingest expects credit or stop)",
                    msg.KIND,
                )

    def _deliver(self, now: float) -> None:
        frame = self.delivery.next()
        if frame is None:
            return
        try:
            self.session.send(Capture(frame.t_arrival, frame.width, frame.height, frame.jpeg), now, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.delivery.not_delivered()
        else:
            self.delivery.delivered()

    def _send_stats(self, now: float) -> None:
        if not self.session.joined:
            return  # the core does not know this session: it would only answer "say Hello"
        try:
            self.session.send(Stats("ingest", self.stream, self.counters()), now, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.counts["stats_unsent"] += 1

    # -- the end --------------------------------------------------------------------------------

    def end_reason(self, outcome: str) -> str:
        """Why the stream ended, as CaptureEnded and Bye say it."""
        reasons = {
            "stopped": "the ingest was stopped",
            "stop": f"stopped by the core ({self.stop_reason})",
            "max_frames": f"max_frames ({self.cfg.max_frames}) read",
            "ended": f"the camera's stream ended ({self.end_detail})",
            "failed": f"the camera failed ({self.end_detail})",
            "crashed": "the ingest crashed",
        }
        return reasons.get(outcome, outcome)[:TEXT_MAX]

    def finish(self, outcome: str) -> None:
        """The end: the final Stats, CaptureEnded and Bye to the core, if the session is joined."""
        if self._closed:
            return
        self.delivery.give_up()  # lossless: a frame still waiting for credit
        reason = self.end_reason(outcome)
        now = time.monotonic()
        self._measure_rate(now)
        self.delivery.source_left_out(self.camera.get("sampled_out", 0))
        if outcome != "refused" and self.session.joined:
            self._send_stats(now)
            counts = self.end_counts()
            if self.delivery.unreported:  # given up or left out since the last Hello: the core counts them dropped
                counts["dropped"] = self.delivery.unreported
            ended = CaptureEnded(reason, counts)
            if self.session.sock.poll(int(END_WAIT * 1000), zmq.POLLOUT):
                self.session.send(ended, now, flags=zmq.NOBLOCK)
            else:
                log.error("the core at %s is not taking messages: it does not hear the stream ended", self.cfg.core)
        elif outcome != "refused":
            log.warning("the core at %s is not joined: it does not hear the stream ended", self.cfg.core)
        log.info("end of stream %r: %s; %s", self.stream, reason, self.counters())
        self.close(reason)

    def close(self, reason: str = "") -> None:
        """Bye (if joined) and close the session's socket, which lingers to deliver what it holds."""
        if not self._closed:
            self._closed = True
            self.session.close(time.monotonic(), reason[:TEXT_MAX])

    # -- counters -------------------------------------------------------------------------------

    def _measure_rate(self, now: float) -> None:
        when, read, _ = self._rate
        if now > when:
            self._rate = (now, self.delivery.read, (self.delivery.read - read) / (now - when))

    def end_counts(self) -> FrameCounts:
        """What CaptureEnded carries: the camera's counts (the rest is in the final Stats)."""
        c = self.camera
        return {"corrupt": c["corrupt"], "reconnects": c["reconnects"], "truncated": c["truncated"]}

    def counters(self) -> dict:
        """What Stats carries: what was read, sent and not delivered, the camera's counts, the session's."""
        d, c = self.delivery, self.camera
        return {
            "read": d.read,
            "published": d.sent,
            "undelivered": d.undelivered,
            "pending": int(d.pending is not None),
            "credit": d.credit,
            **self.end_counts(),
            "bytes": c["bytes"],
            "connects": c.get("connects", 0),
            "oversized": c.get("oversized", 0),
            "stalls": c.get("stalls", 0),
            **{k: c[k] for k in VIDEO_COUNTS if k in c},
            "fps": round(self._rate[2], 2),
            "joined": int(self.session.joined),
            "lives": self.session.lives,
            **self.counts,
        }

    def summary(self) -> str:
        d, c = self.delivery, self.camera
        elapsed = max(1e-6, time.monotonic() - self.started)
        return (
            f"{d.read} frames read ({self._rate[2]:.1f}/s now, {d.read / elapsed:.1f}/s overall), {d.sent} sent to "
            f"the core, {d.undelivered} undelivered, "
            + (f"{c['sampled_out']} sampled out, " if c.get("sampled_out") else "")
            + f"{c['corrupt']} corrupt, {c['reconnects']} reconnects; "
            + ("joined" if self.session.joined else "not joined")
        )
