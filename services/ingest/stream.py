"""One camera stream as the main thread serves it: numbering, publishing, dispatching, notices, counters.

``Ingest`` gets its sockets from main() and owns them from then on (ZeroMQ sockets are
not thread-safe: everything here runs in the main thread). Frames come from the reader
thread (reader.py) as unnumbered ``JpegFrame`` events; each published frame gets the next
sequence number, goes to every subscriber (PUB) and to one encoder worker by credit
(ROUTER, see dispatch.py). Metrics hears of what happens to the stream (PUSH): its start,
each dropped frame, its end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

import zmq

from encoders.services.ingest.config import IngestConfig
from encoders.shared import zmqio
from encoders.shared.messages import Credit, Dropped, EndOfStream, Frame, FrameCounts, Message, Stats, StreamStart

from .dispatch import Dispatcher, WorkerGone
from .http_source import JpegFrame
from .reader import CameraReader

log = logging.getLogger("encoders.ingest")

STATS_EVERY = 1.0  # seconds between Stats messages
LOG_EVERY = 10.0  # seconds between summary log lines
POLL_MS = 100
SHUTDOWN_CREDIT_WAIT = 1.0  # how long a frame still pending at shutdown waits for a worker
NOTICE_WAIT = 2.0  # how long the final EndOfStream may wait for room on the PUSH socket


class Ingest:
    """The main thread's state: numbering, publishing, dispatching, notices and counters.

    ``camera`` is the source's counters (corrupt, reconnects, truncated, bytes), which the
    reader thread updates in place; they are only read here, for statistics.
    """

    def __init__(
        self, cfg: IngestConfig, pub: zmq.Socket, router: zmq.Socket, push: zmq.Socket, camera: Mapping[str, int]
    ) -> None:
        self.cfg = cfg
        self.stream = cfg.stream_id
        self.pub, self.router, self.push = pub, router, push
        self.camera = camera
        self.names: dict[bytes, str] = {}  # worker identity -> the name it gives in Credit
        self.dispatcher: Dispatcher[bytes, Frame] = Dispatcher(
            self._send_to_worker, lossless=cfg.lossless, name=lambda w: repr(self.names.get(w, w))
        )
        self.next_seq = 0
        self.counts = dict.fromkeys(("published", "dropped", "notices_lost", "bad_messages"), 0)
        self.started = time.monotonic()
        self._rate = (self.started, 0, 0.0)  # (when, published then, frames per second since the last one)

    # -- protocol ----------------------------------------------------------------------------

    def start(self) -> None:
        start = StreamStart(stream=self.stream, first_seq=0, url=self.cfg.stream)
        self._notify(start)
        zmqio.send(self.pub, start, topic=True)
        log.info(
            "stream %r: publishing frames on %s, work for encoders on %s, notices to %s",
            self.stream,
            self.cfg.frames_bind,
            self.cfg.work_bind,
            self.cfg.metrics_in,
        )

    def take_credits_for(self, seconds: float, stop: threading.Event) -> None:
        deadline = time.monotonic() + seconds
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if self.router.poll(int(left * 1000) + 1, zmq.POLLIN):
                self._take_credits()

    def loop(self, reader: CameraReader, stop: threading.Event) -> str:
        """Until stopped, max_frames, or the reader ends. Returns 'stopped', 'max_frames', 'ended' or 'failed'."""
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(reader.inbox, zmq.POLLIN)
        reading = True
        next_stats = time.monotonic() + STATS_EVERY
        next_log = time.monotonic() + LOG_EVERY
        while not stop.is_set():
            if self.dispatcher.accepting != reading:
                reading = self.dispatcher.accepting  # lossless: stop reading while a frame waits
                poller.modify(reader.inbox, zmq.POLLIN if reading else 0)
            events = dict(poller.poll(POLL_MS))
            if self.router in events:
                self._take_credits()
            if reading and reader.inbox in events:
                event = reader.receive()
                if isinstance(event, JpegFrame):
                    self._publish(event)
                    if self.cfg.max_frames and self.next_seq >= self.cfg.max_frames:
                        log.info("published %d frames (max_frames): stopping", self.next_seq)
                        return "max_frames"
                elif event.outcome != "stopped":
                    log.info("the camera stream has ended (%s)", event.reason or event.outcome)
                    return event.outcome
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + STATS_EVERY
                self._measure_rate(now)
                zmqio.send(self.pub, Stats("ingest", self.stream, self.counters()), topic=True)
            if now >= next_log:
                next_log = now + LOG_EVERY
                log.info("%s", self.summary())
        return "stopped"

    def _measure_rate(self, now: float) -> None:
        when, published, _ = self._rate
        if now > when:
            self._rate = (now, self.counts["published"], (self.counts["published"] - published) / (now - when))

    def finish(self) -> None:
        """Shutdown: give a pending frame ~1 s to find a worker, then say where the stream ended."""
        deadline = time.monotonic() + SHUTDOWN_CREDIT_WAIT
        while self.dispatcher.waiting and time.monotonic() < deadline:
            if self.router.poll(int(max(0.0, deadline - time.monotonic()) * 1000) + 1, zmq.POLLIN):
                self._take_credits()
        for frame in self.dispatcher.take_waiting():
            self._drop(frame, "shutdown")
        counts = self.eos_counts()
        eos = EndOfStream(self.stream, self.next_seq - 1, counts)
        zmqio.send(self.pub, eos, topic=True)
        if self.push.poll(int(NOTICE_WAIT * 1000), zmq.POLLOUT):
            zmqio.send(self.push, eos, flags=zmq.NOBLOCK)
        else:
            log.error("metrics (%s) is not taking messages: the end-of-stream notice is lost", self.cfg.metrics_in)
        log.info("end of stream %r: last seq %d, %s", self.stream, self.next_seq - 1, counts)

    # -- frames ------------------------------------------------------------------------------

    def _publish(self, raw: JpegFrame) -> None:
        frame = Frame(self.stream, self.next_seq, raw.t_arrival, raw.width, raw.height, raw.jpeg)
        self.next_seq += 1
        self.counts["published"] += 1
        zmqio.send(self.pub, frame, topic=True)
        displaced = self.dispatcher.offer(frame)
        if displaced is not None:
            self._drop(displaced, "no free encoder")

    def _send_to_worker(self, worker: bytes, frame: Frame) -> None:
        try:
            zmqio.send(self.router, frame, prefix=[worker], flags=zmq.NOBLOCK)
        except zmq.Again:
            # Its queue is full although it holds credit: the worker has stopped reading.
            raise WorkerGone("its queue is full") from None
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise WorkerGone("disconnected") from None
            raise

    def _take_credits(self) -> None:
        while self.router.poll(0, zmq.POLLIN):
            msg, identity = zmqio.receive(self.router, routed=True, counters=self.counts)
            if isinstance(msg, Credit) and identity is not None:  # routed: always a sender's identity
                if identity not in self.dispatcher.ledger:
                    self.names[identity] = msg.worker
                    log.info("encoder worker %r joined with %d credit(s)", msg.worker, msg.n)
                self.dispatcher.credit(identity, msg.n)
            elif msg is not None:
                self.counts["bad_messages"] += 1
                log.warning("ignored a %s message on the work socket (only credit is expected)", msg.KIND)

    def _drop(self, frame: Frame, reason: str) -> None:
        self.counts["dropped"] += 1
        self._notify(Dropped(self.stream, frame.seq, reason))

    def _notify(self, msg: Message) -> None:
        """A notice for metrics. Never blocks the stream: if metrics is away and the queue full, it is lost."""
        try:
            zmqio.send(self.push, msg, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.counts["notices_lost"] += 1
            if self.counts["notices_lost"] in (1, 10, 100) or self.counts["notices_lost"] % 1000 == 0:
                log.warning(
                    "metrics (%s) is not taking notices: %d lost so far",
                    self.cfg.metrics_in,
                    self.counts["notices_lost"],
                )

    # -- counters ----------------------------------------------------------------------------

    def eos_counts(self) -> FrameCounts:
        c = self.camera
        return {
            "published": self.counts["published"],
            "dispatched": self.dispatcher.dispatched,
            "dropped": self.counts["dropped"],
            "corrupt": c["corrupt"],
            "reconnects": c["reconnects"],
            "truncated": c["truncated"],
        }

    def counters(self) -> dict:
        """What Stats carries: the end-of-stream counts, the current state, and the frame rate."""
        ledger = self.dispatcher.ledger
        return {
            **self.eos_counts(),
            "pending": len(self.dispatcher.waiting),
            "workers": len(ledger.workers),
            "credits": ledger.total,
            "workers_gone": self.dispatcher.workers_gone,
            "notices_lost": self.counts["notices_lost"],
            "bad_messages": self.counts["bad_messages"],
            "bytes": self.camera["bytes"],
            "fps": round(self._rate[2], 2),
        }

    def summary(self) -> str:
        elapsed = max(1e-6, time.monotonic() - self.started)
        c = self.camera
        return (
            f"{self.counts['published']} frames published ({self._rate[2]:.1f}/s now, "
            f"{self.counts['published'] / elapsed:.1f}/s overall), {self.dispatcher.dispatched} to encoders, "
            f"{self.counts['dropped']} dropped, {c['corrupt']} corrupt, {c['reconnects']} reconnects; "
            f"{len(self.dispatcher.ledger.workers)} worker(s) holding {self.dispatcher.ledger.total} credit(s)"
        )
