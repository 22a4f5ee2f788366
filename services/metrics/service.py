"""The metrics service's loop: embeddings in, records out to viewers and to the recorder.

``MetricsService`` is given its sockets: the inbox (PULL: every worker's outcomes and
ingest's notices), the PUB viewers subscribe to, and the PUSH to the recorder (or None
when there is none). What to publish, and when, is ``Streams``' business; this class
moves messages, keeps the recorder's backlog, and reports.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from threading import Event
from typing import cast

import zmq

from encoders.shared import zmqio
from encoders.shared.messages import EndOfStream, MetricsRecord, Stats

from .streams import Streams

log = logging.getLogger("encoders.metrics")

# The recorder must get every record. ZeroMQ queues this many for it; past that (or while no
# recorder is connected) records wait in a backlog here instead of blocking the pipeline.
RECORDS_HWM = 100_000
# At shutdown, how long to keep offering the backlog to a recorder.
FLUSH_S = 10.0
POLL_MS = 50  # how long the loop waits for input before releasing what is due anyway
STATS_EVERY = 1.0  # seconds between Stats messages
LOG_EVERY = 10.0  # seconds between summary log lines
WARN_EVERY = 5.0  # seconds between 'holding N records' warnings


class MetricsService:
    """Takes outcomes in, publishes records in order, and holds the recorder's until it takes them."""

    def __init__(
        self,
        streams: Streams,
        inbox: zmq.Socket,
        pub: zmq.Socket,
        records: zmq.Socket | None,
        *,
        exit_after_streams: int = 0,
    ):
        self.streams = streams
        self.inbox = inbox
        self.pub = pub
        self.records = records
        self.exit_after_streams = exit_after_streams
        self.backlog: deque = deque()  # records the recorder has not taken yet, oldest first
        self.counters = {"bad_messages": 0, "records": 0}
        self.warned = 0.0  # when the backlog was last reported
        self.last_stats = self.last_log = time.monotonic()

    def take_waiting(self, timeout_ms: int = POLL_MS) -> None:
        """Feed every message waiting to its stream (waiting up to ``timeout_ms`` for one)."""
        if self.inbox.poll(timeout_ms):
            while self.inbox.poll(0):  # take everything waiting before releasing
                msg, _ = zmqio.receive(self.inbox, counters=self.counters, copy=True)  # embeddings: ~2 KB
                if msg is not None:
                    self.streams.accept(msg)

    def release(self) -> None:
        """Publish every record now in order, and every stream's end; queue them for the recorder."""
        for msg in self.streams.release():
            zmqio.send(self.pub, msg, topic=True)
            if self.records is not None:
                self.backlog.append(msg)
            if isinstance(msg, MetricsRecord):
                self.counters["records"] += 1
            elif isinstance(msg, EndOfStream):
                log.info("stream %s ended: %s", msg.stream, msg.counts)

    def flush_backlog(self) -> None:
        """Hand the recorder what it has room for; warn now and then while it has none."""
        if self.records is None:
            return  # no recorder: nothing is held for one
        while self.backlog:
            try:
                zmqio.send(self.records, self.backlog[0], flags=zmq.NOBLOCK)
            except zmq.Again:
                if time.monotonic() - self.warned > WARN_EVERY:
                    self.warned = time.monotonic()
                    log.warning("recorder not connected or not keeping up: holding %d records", len(self.backlog))
                return
            self.backlog.popleft()

    def done(self) -> bool:
        """With exit_after_streams: that many streams have ended and the recorder has all their records."""
        if self.exit_after_streams and not self.backlog and self.streams.ended() >= self.exit_after_streams:
            log.info("all %d streams ended", self.streams.ended())
            return True
        return False

    def report(self, now: float) -> None:
        """Each stream's totals: as Stats for viewers every second, in the log every ten."""
        if now - self.last_stats > STATS_EVERY:
            self.last_stats = now
            for name in self.streams.streams:
                # The totals are a FrameCounts: a TypedDict, to mypy never the plain dict it is.
                totals = cast(dict, self.streams.totals(name))
                zmqio.send(self.pub, Stats("metrics", name, totals), topic=True)
        if now - self.last_log > LOG_EVERY:
            self.last_log = now
            for name in self.streams.streams:
                log.info("%s: %s", name, self.streams.totals(name))

    def run(self, stop: Event) -> None:
        """Until ``stop`` is set, or every stream asked for has ended."""
        while not stop.is_set():
            self.take_waiting()
            self.release()
            self.flush_backlog()
            if self.done():
                break
            self.report(time.monotonic())

    def finish(self, limit_s: float = FLUSH_S) -> None:
        """Publish what is due, and keep offering the backlog to a recorder for up to ``limit_s``."""
        self.release()
        deadline = time.monotonic() + limit_s
        while self.backlog and time.monotonic() < deadline:
            self.flush_backlog()
            time.sleep(0.01)
        if self.backlog:
            log.error("%d records never reached a recorder", len(self.backlog))
        log.info(
            "metrics done: %d records published, %d bad messages",
            self.counters["records"],
            self.counters["bad_messages"],
        )

    def close(self) -> None:
        self.inbox.close(0)
        self.pub.close()
        if self.records is not None:
            self.records.close()  # lingers so the recorder receives the last records
