"""The recorder's receive loop: records and frames from their sockets into the Recorder, and on to disk.

The sockets are given to it (tests make their own); it owns none of them. One ``step``
waits up to POLL_MS for messages, hands what is waiting to the Recorder (frames first: a
record's frame normally arrives just before it, and its snapshot needs it), and does the
periodic work: thumbnails handed on, the database writer's batches, drift.csv flushed to
disk, a progress line.
"""

from __future__ import annotations

import logging
import time

import zmq

from encoders.shared import zmqio

from .recorder import Recorder
from .writer import FrameWriter

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0
FILE_FLUSH_S = 1.0
POLL_MS = 100
DRAIN_MAX = 500  # messages taken from one socket before looking at the other
DRAIN_AT_EXIT_S = 2.0


class Receiver:
    def __init__(self, records: zmq.Socket, frames: zmq.Socket | None, recorder: Recorder, writer: FrameWriter):
        self.records, self.frames = records, frames
        self.recorder, self.writer = recorder, writer
        # Messages that do not decode are counted beside the recorder's own counts.
        self.counters = recorder.counters
        self.poller = zmq.Poller()
        for sock in (records, frames):
            if sock is not None:
                self.poller.register(sock, zmq.POLLIN)
        now = time.monotonic()
        self._next_log, self._next_flush = now + LOG_EVERY_S, now + FILE_FLUSH_S

    def step(self) -> None:
        """Wait a little for messages, take them, do what is due. Raises the writer's DatabaseRefused."""
        ready = dict(self.poller.poll(POLL_MS))
        if self.frames is not None and self.frames in ready:
            self._drain(self.frames, topic=True, copy=False)  # JPEGs: taken without a copy
        if self.records in ready:
            self._drain(self.records, topic=False, copy=True)  # records (~2 KB) are cheaper as bytes
        self.recorder.tick()
        self.writer.tick()
        if self.writer.fatal is not None:
            raise self.writer.fatal
        now = time.monotonic()
        if now >= self._next_flush:
            self.recorder.flush_files()
            self._next_flush = now + FILE_FLUSH_S
        if now >= self._next_log:
            self.log_progress()
            self._next_log = now + LOG_EVERY_S

    def drain_records(self, seconds: float = DRAIN_AT_EXIT_S) -> None:
        """At the end: records already delivered to this process are recorded, not dropped with the socket."""
        self._drain(self.records, topic=False, copy=True, until=time.monotonic() + seconds)

    def log_progress(self) -> None:
        streams = (
            ", ".join(
                f"{name} {f.summary.records} records {f.summary.snapshots} snapshots {f.batches.written} npz"
                for name, f in self.recorder.streams.items()
            )
            or "no records yet"
        )
        bad = self.counters.get("bad_messages", 0)
        log.info(
            "%s; database: %d rows written in %d commits, %d waiting, %d spooled%s",
            streams,
            sum(self.writer.written.values()),
            self.writer.commits,
            len(self.writer.pending),
            self.writer.spooled,
            f"; {bad} bad messages dropped" if bad else "",
        )

    def _drain(self, sock: zmq.Socket, *, topic: bool, copy: bool, until: float = 0.0) -> None:
        """The messages waiting on ``sock``: at most DRAIN_MAX, or (``until``) all that come before then."""
        for msg in zmqio.receive_waiting(
            sock, limit=DRAIN_MAX, until=until, topic=topic, counters=self.counters, copy=copy
        ):
            self.recorder.on_message(msg)
