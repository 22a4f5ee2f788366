"""One camera stream as the main thread serves it: its session with the core, captures, counters, the end.

``Ingest`` opens its session with the core (shared/session.py) on the context it is given
and is handed the camera's feed (feed.py: the MJPEG camera's socket, or a video reader
thread's pipe); everything here runs in the main thread (ZeroMQ sockets are not
thread-safe). Each ``step`` takes what the core sent (Welcome, Credit, Assigned, Workers,
Preview, WantPictures, Stop), takes the frames the feed read while ``delivery.py`` may send
them into the outbox (outbox.py), announces what waits there in one
``Captured``, sends each picture the core's ``Assigned`` gave a worker straight to that worker
(``Pictures`` on the data link, links.py), and once a second tells the core the stream's
counters (``Stats``). The core numbers frames and decides which worker embeds each; no JPEG
goes through it (docs/PROTOCOL.md, "Protocol 3").

The feed starts once the core has welcomed the session (or after the session's timeout
without an answer, so that a camera that fails is still noticed): a core that is up gets
the stream from its first frame.

At the end (the camera's stream ended, max_frames, a signal, or a Stop from the core),
``finish`` sends the final Stats, ``CaptureEnded`` with the camera's counts, and ``Bye``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

import zmq

from encoders.services.ingest.config import IngestConfig
from encoders.shared import zmqio
from encoders.shared.complaints import Complaints
from encoders.shared.keys import client as client_keys
from encoders.shared.masking import mask
from encoders.shared.messages import (
    PROTOCOL,
    TEXT_MAX,
    Assigned,
    CaptureEnded,
    Credit,
    FrameCounts,
    Hello,
    NoPictures,
    Pictures,
    Preview,
    Stats,
    Stop,
    WantPictures,
    Welcome,
    Workers,
)
from encoders.shared.session import CoreSession, SessionRefused, process_name

from .delivery import Delivery
from .feed import Feed
from .links import Links
from .outbox import Outbox
from .pictures import JpegFrame

log = logging.getLogger("encoders.ingest")
complain = Complaints(log, "the stream's Stats")  # bad input: logged once, then counted

STATS_EVERY = 1.0  # seconds between Stats messages
LOG_EVERY = 10.0  # seconds between summary log lines
POLL_MS = 100
# Frames taken from the feed in one turn at most, so that the core's messages are read in between.
TAKE_PER_TURN = 32
# Captures queued for the core before one is counted undelivered (real time): ~4 MB at
# 640x480, a few seconds of a camera; a core that far behind gets the newest frames.
SNDHWM = 100
END_WAIT = 2.0  # how long the end of the stream may wait for room on the socket
# Lossless, how long the end waits for the core's next decision on the captures it has not assigned yet:
# a worker that takes none for this long is not coming (the core then drops them, counted).
LOSSLESS_SETTLE_S = 30.0
SETTLE_SAY_EVERY = 5.0  # seconds between "captures wait for a worker" lines at the end

# A video source's own counts (av_source.py), in Stats when the source keeps them.
VIDEO_COUNTS = ("decoded", "sampled_out", "clock_resets", "abandoned")

# Why the loop ended: a signal, a Stop from the core, max_frames, the camera's stream ended
# (reconnect off), the camera never answered, the core refused the session, a crash.
OUTCOMES = ("stopped", "stop", "max_frames", "ended", "failed", "refused", "crashed")


class Ingest:
    """The main thread's state: the session, what is delivered, the counters.

    ``camera`` is the source's counters (corrupt, reconnects, truncated, bytes...), which the
    source updates in place (a video reader thread, or the feed in this thread); they are only
    read here.
    """

    def __init__(self, cfg: IngestConfig, ctx: zmq.Context, feed: Feed, camera: Mapping[str, int]) -> None:
        self.cfg = cfg
        self.stream = cfg.stream_id
        self.feed, self.camera = feed, camera
        self.delivery = Delivery(cfg.lossless)
        self.counts = dict.fromkeys(
            ("bad_messages", "unexpected_messages", "stats_unsent", "previews", "pictures_wanted", "pictures_gone"), 0
        )
        # The JPEGs while the core decides who embeds them, and the ring of those sent (outbox.py);
        # a data link to each worker the core names (links.py).
        self.outbox = Outbox(cfg.outbox, cfg.picture_ring, cfg.lossless)
        self.session = CoreSession.from_settings(
            ctx,
            cfg,
            "ingest",
            self.hello,
            on_join=self._joined,
            on_lost=self._lost,
            counters=self.counts,
            sndhwm=SNDHWM,
        )
        self.links = Links(ctx, client_keys(cfg.keys, "ingest"), self.counts)
        self.preview_fps = 0.0  # previews a second at most (0: nobody watches the stream)
        self._tokens, self._tokens_at = 0.0, 0.0
        self.poller = zmq.Poller()
        self.poller.register(self.session.sock, zmq.POLLIN)
        self._polled: object = None  # what of the feed's is registered with the poller
        self._polled_key: object = None  # how the poller names it in its events (a plain socket: its fd)
        self._watching = False  # frames are taken from the feed
        self.feed_started = False
        self.stop_reason: str | None = None  # the core's Stop
        self.end_detail = ""  # why the camera's stream ended, in words
        self.started = time.monotonic()
        self._start_feed_by = 0.0
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

    def _lost(self) -> None:
        self.delivery.lose()
        self.delivery.unsent(self.outbox.forget())  # what was announced is the core's to count
        self.preview_fps = 0.0

    def _joined(self, welcome: Welcome) -> None:
        self.delivery.unsent(self.outbox.forget())
        self.delivery.join(welcome.credit, welcome.core)
        if self.cfg.lossless:
            log.info("stream %r: the core takes captures, %d credit to start with", self.stream, welcome.credit)
        else:
            log.info("stream %r: the core takes captures", self.stream)

    def start(self) -> None:
        """Say Hello; the feed starts once the core answers, or after the session's timeout."""
        now = time.monotonic()
        self.session.start(now)
        self._start_feed_by = now + self.session.timeout_s
        self._next_stats, self._next_log = now + STATS_EVERY, now + LOG_EVERY

    # -- the loop -------------------------------------------------------------------------------

    def loop(self, stop: threading.Event, on_turn: Callable[[], None] = lambda: None) -> str:
        """Steps (after ``start``) until one ends the stream, or ``stop`` is set. Returns one of OUTCOMES.
        ``on_turn``: called each turn (the exporter's beat: /healthz tells a wedged loop)."""
        try:
            while not stop.is_set():
                on_turn()
                outcome = self.step(POLL_MS)
                if outcome is not None:
                    return outcome
        except SessionRefused as exc:
            log.error("%s", exc)
            return "refused"
        return "stopped"

    def step(self, timeout_ms: int) -> str | None:
        """One turn: the core's messages, the next frame, the heartbeat and the counters. An outcome ends it."""
        now = time.monotonic()
        polled = self._watch_feed(now)
        for wait in (self.outbox.wait_s(now), self.feed.wait_s(now) if self._watching else None):
            if wait is not None:
                timeout_ms = min(timeout_ms, zmqio.poll_ms(wait))
        events = dict(self.poller.poll(timeout_ms))
        now = time.monotonic()
        if self.session.sock in events:
            self._from_core(now)
        if self.stop_reason is not None:
            return "stop"
        if not self.feed_started and (self.session.joined or now >= self._start_feed_by):
            self.feed.start()
            self.feed_started = True
        self._deliver(now)
        if self._taking():
            self.feed.fill(now, polled is not None and polled in events)
            outcome = self._take_frames(now)
            if outcome is not None:
                return outcome
        self._announce(now)
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
        return self.feed_started and self.delivery.accepting and not self._max_reached()

    def _max_reached(self) -> bool:
        return bool(self.cfg.max_frames) and self.delivery.read >= self.cfg.max_frames

    def _watch_feed(self, now: float) -> object:
        """Poll the feed only while frames may be taken (lossless: the camera is then held back); how the
        poller's events name what is polled (or None). The feed's socket changes as it reconnects."""
        if self._taking() != self._watching:
            self._watching = not self._watching
            self.feed.watch(now, self._watching)
        item = self.feed.poll_on() if self._watching else None
        if item is not self._polled:
            if self._polled is not None:
                self.poller.unregister(self._polled)
            if item is not None:
                self.poller.register(item, zmq.POLLIN)
            self._polled = item
            self._polled_key = item if item is None or isinstance(item, zmq.Socket) else item.fileno()
        return self._polled_key

    def _take_frames(self, now: float) -> str | None:
        """The frames the feed has read, while delivery takes them; the camera's end, as an outcome."""
        for _ in range(TAKE_PER_TURN):
            if not self._taking():
                return None
            event = self.feed.take()
            if event is None:
                return None
            if isinstance(event, JpegFrame):
                self.delivery.add(event)
                self._deliver(now)
            elif event.outcome != "stopped":
                self.end_detail = event.reason or event.outcome
                log.info("the camera stream has ended (%s)", self.end_detail)
                self._announce(now, force=True)  # what it read last: announced now, not in 2 ms
                return event.outcome
        return None

    def _from_core(self, now: float) -> None:
        for msg in self.session.take(now):
            if isinstance(msg, Assigned):
                self._assigned(msg, now)
            elif isinstance(msg, Workers):
                self.links.update(msg)
            elif isinstance(msg, Preview):
                self.preview_fps = msg.fps
                self._tokens, self._tokens_at = max(1.0, msg.fps), now
                log.info("stream %r: previews %s", self.stream, f"at most {msg.fps:g}/s" if msg.fps else "off")
            elif isinstance(msg, WantPictures):
                self._wanted(msg, now)
            elif isinstance(msg, Credit):
                self.delivery.add_credit(msg.n)
            elif isinstance(msg, Stop):
                self.stop_reason = msg.reason or "no reason given"
                log.info("the core asks this stream to stop (%s)", self.stop_reason)
            else:
                self.counts["unexpected_messages"] += 1
                complain(
                    "unexpected_messages",
                    "ignored a %s message from the core (an ingest expects assignments, workers, credit or stop)",
                    msg.KIND,
                )

    def _deliver(self, now: float) -> None:
        """The next frame into the outbox, to be announced (``_announce``, at the end of the turn) with the
        others due: the frames of one read of the camera go in one ``Captured``, not the first alone."""
        frame = self.delivery.next()
        if frame is None:
            return
        given_up = self.outbox.add(frame, now)
        self.delivery.delivered()
        self.delivery.unsent(given_up)  # real time: the oldest waiting, for room

    def _announce(self, now: float, force: bool = False) -> None:
        """The captures due (every 2 ms or 64 of them, at once one that came alone: outbox.py) to the core
        as one Captured."""
        if not (force or self.outbox.due(now)):
            return
        notes = self.outbox.notes()
        if notes is None:
            return
        try:
            self.session.send(notes, now, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.delivery.unsent(self.outbox.unannounce(notes))

    def _assigned(self, msg: Assigned, now: float) -> None:
        """The core's decisions: each worker's pictures in one Pictures on its data link; a preview when due."""
        for worker, frames in self.outbox.assign(self.stream, msg).items():
            self.links.send(worker, Pictures.of(self.stream, frames))
        sent = self.outbox.decided  # previews of what the core numbered, whether a worker embeds it or not
        if sent and self.preview_fps:
            # A token bucket: at most preview_fps a second, a second's worth at once at most.
            self._tokens = min(max(1.0, self.preview_fps), self._tokens + (now - self._tokens_at) * self.preview_fps)
            self._tokens_at = now
            n = min(len(sent), int(self._tokens))
            if n:
                self._tokens -= n
                self._send_pictures(sorted(sent, key=lambda f: f.seq)[-n:], now, preview=True)

    def _wanted(self, msg: WantPictures, now: float) -> None:
        """A snapshot's pictures, from the ring; the seqs no longer in it said at once (``NoPictures``),
        so that the recorder does not wait for them."""
        frames, gone = self.outbox.pictures(msg.seqs())
        self._send_pictures(frames, now, preview=False)
        if not gone or not self.session.joined:
            return
        try:
            self.session.send(NoPictures.of(self.stream, gone), now, flags=zmq.NOBLOCK)
        except zmq.Again:
            return  # the recorder's wait ends them
        self.counts["pictures_gone"] += len(gone)

    def _send_pictures(self, frames: list, now: float, *, preview: bool) -> None:
        """Pictures on the session, for the core to publish (previews) or hand the recorder (snapshots)."""
        if not frames or not self.session.joined:
            return
        try:
            self.session.send(Pictures.of(self.stream, frames, preview), now, flags=zmq.NOBLOCK)
        except zmq.Again:
            return
        self.counts["previews" if preview else "pictures_wanted"] = self.counts.get(
            "previews" if preview else "pictures_wanted", 0
        ) + len(frames)

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
            self._announce(now, force=True)  # every capture announced, before the end
            self._send_stats(now)
            counts = self.end_counts()
            if self.delivery.unreported:  # given up or left out since the last Hello: the core counts them dropped
                counts["dropped"] = self.delivery.unreported
            ended = CaptureEnded(reason, counts)
            if self.session.sock.poll(int(END_WAIT * 1000), zmq.POLLOUT):
                self.session.send(ended, now, flags=zmq.NOBLOCK)
                # Then the captures announced and not decided yet: the core goes on assigning them after the
                # end (the session is still open), and their pictures go to their workers before Bye.
                self._settle(time.monotonic())
            else:
                log.error("the core at %s is not taking messages: it does not hear the stream ended", self.cfg.core)
        elif outcome != "refused":
            log.warning("the core at %s is not joined: it does not hear the stream ended", self.cfg.core)
        log.info("end of stream %r: %s; %s", self.stream, reason, self.counters())
        self.close(reason)

    def settle_s(self) -> float:
        """How long the end waits for the core's next decision on its captures not decided yet.

        Real time, one heartbeat (within END_WAIT): the core decides a capture in the turn it takes it
        when a worker has room, and says something at least every heartbeat; what it has not decided by
        then waits for room no worker gave, and the core drops it when this session ends (counted there).
        Lossless, LOSSLESS_SETTLE_S since the last decision: every capture waits for a worker's room,
        however long the workers take, as long as they take some (a drain of a full queue takes seconds)."""
        return LOSSLESS_SETTLE_S if self.cfg.lossless else min(END_WAIT, self.session.heartbeat_s)

    def _settle(self, now: float) -> None:
        """At the end, after CaptureEnded: while captures announced are not decided yet and the core's
        session is alive, their decisions waited for (``settle_s`` since the last one) and the pictures
        of those assigned sent. Nothing pending: no wait at all."""
        pending, since, said = len(self.outbox.announced), now, now
        limit = self.settle_s()
        while self.outbox.announced and self.session.alive(t := time.monotonic()):
            if len(self.outbox.announced) < pending:
                pending, since = len(self.outbox.announced), t
            left = since + limit - t
            if left <= 0:
                break
            if t - said >= SETTLE_SAY_EVERY:
                said = t
                log.info("stream %r: %d captures wait for a worker before the end", self.stream, pending)
            if self.session.sock.poll(int(min(left, SETTLE_SAY_EVERY) * 1000) + 1):
                self._from_core(time.monotonic())
        if self.outbox.announced:
            log.warning("stream %r: %d captures announced and not decided at the end (the core drops them)",
                        self.stream, len(self.outbox.announced))  # fmt: skip

    def close(self, reason: str = "") -> None:
        """Bye (if joined) and close the session's socket, which lingers to deliver what it holds."""
        if not self._closed:
            self._closed = True
            self.session.close(time.monotonic(), reason[:TEXT_MAX])
            self.links.close()

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
            "outbox": len(self.outbox),
            **{f"outbox_{k}": v for k, v in self.outbox.counts.items()},
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
